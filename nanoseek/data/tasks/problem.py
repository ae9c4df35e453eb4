"""What every task shares: a `Problem`, its worked `Solution`, the `Task` interface and the split rule.

A problem is data (prompt, reference answer, task name, metadata) that round-trips through JSON, so a
problem file written today is checked the same way tomorrow. Its *canonical key* is the problem stripped of
phrasing (the operands of a sum in sorted order, the numbers and target of a Countdown puzzle, the number
chain of a word problem), and the key alone decides whether the problem belongs to train, validation or
test. So splits are disjoint for every seed, size and difficulty, and two phrasings of one problem (Tom's
apples and Ana's coins over the same numbers; 47 + 385 and 385 + 47) never sit in different splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from nanoseek.data.tasks.checkers import format_number, parse_number
from nanoseek.data.tasks.wordings import Frame, rephrase

SPLITS = ("train", "val", "test")
# Out of 1000 hash buckets: test 10%, validation 10%, train 80%.
_TEST_BUCKETS, _VAL_BUCKETS = 100, 100


def split_of(task: str, key: str) -> str:
    """The split ("train", "val" or "test") a problem belongs to, from its task and canonical key only."""
    h = int.from_bytes(hashlib.blake2b(f"{task}|{key}".encode("utf-8"), digest_size=8).digest(), "little")
    bucket = h % 1000
    if bucket < _TEST_BUCKETS:
        return "test"
    if bucket < _TEST_BUCKETS + _VAL_BUCKETS:
        return "val"
    return "train"


@dataclass(frozen=True)
class Solution:
    """A worked solution: the step-by-step reasoning (one step per line) and the final answer."""

    reasoning: str
    answer: str


@dataclass(frozen=True)
class Problem:
    """One problem: the prompt shown to the model, the reference answer, the task that checks it, metadata.

    meta holds what the task needs to check and solve the problem (operands, the Countdown numbers, the
    checker of a bring-your-own problem), plus "key" (canonical form) and "difficulty"; all JSON values.
    """

    task: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Canonical form (decides the split); a bring-your-own problem's is its prompt."""
        return self.meta.get("key", self.prompt)

    @property
    def difficulty(self) -> int | None:
        return self.meta.get("difficulty")

    @property
    def id(self) -> str:
        """A short stable id: task name and a hash of the canonical key."""
        return f"{self.task}-{hashlib.blake2b(self.key.encode('utf-8'), digest_size=5).hexdigest()}"

    @property
    def split(self) -> str:
        return split_of(self.task, self.key)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "prompt": self.prompt, "answer": self.answer, "meta": dict(self.meta)}


class Task:
    """A generator of problems with an exact checker and a worked solution. Subclasses set `name`,
    `summary` and `levels` (one line per difficulty, 1-based) and implement the four methods."""

    name: str = ""
    summary: str = ""
    levels: tuple[str, ...] = ()
    generated: bool = True  # False for tasks read from files (nothing to sample)
    frames: tuple[Frame, ...] = ()  # the wordings a problem can be asked in (nanoseek.data.tasks.wordings)

    @property
    def max_difficulty(self) -> int:
        return len(self.levels)

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        """A random problem at `difficulty` (1..max_difficulty), drawn only from `rng`."""
        raise NotImplementedError

    def check(self, problem: Problem, answer: str) -> bool:
        """Whether `answer` (the final answer text, already extracted from a completion) solves `problem`."""
        raise NotImplementedError

    def solve(self, problem: Problem) -> Solution | None:
        """A worked solution, or None when the task has none (a bring-your-own problem without reasoning)."""
        raise NotImplementedError

    def direct_reasoning(self, problem: Problem) -> str | None:
        """The one line a direct answer writes as its reasoning (nanoseek.data.tasks.strategies): the worked
        solution's first line, the problem restated in symbols ("47+385"), with the answer ("47+385=432").
        None when the task has no worked solution."""
        sol = self.solve(problem)
        if sol is None:
            return None
        first = sol.reasoning.splitlines()[0] if sol.reasoning.strip() else ""
        if not first:
            return sol.answer
        return f"{first} = {sol.answer}" if " " in first else f"{first}={sol.answer}"

    def answer_key(self, problem: Problem, answer: str) -> str | None:
        """What majority voting compares: answers that mean the same thing get the same key (for numbers,
        their value). None when the answer is unreadable."""
        text = " ".join(answer.split())
        return text or None

    def wording_fields(self, problem: Problem, rng: random.Random, wording: str) -> tuple[dict[str, Any], set[str]]:
        """The fields `frames` format for this problem in a wording set (with random surface forms), and its
        tags (which frames fit it)."""
        raise NotImplementedError

    def phrase(self, problem: Problem, wording: str, rng: random.Random) -> Problem:
        """The problem asked in a frame of the wording set ("canonical": as sampled). meta["wording"] records
        the frame; the canonical key, answer and worked solution stay as they are."""
        if wording == "canonical" or not self.frames:
            return problem
        fields, tags = self.wording_fields(problem, rng, wording)
        prompt, i = rephrase(self.frames, fields, tags, wording, rng)
        return dataclasses.replace(problem, prompt=prompt, meta={**problem.meta, "wording": i})

    def make(self, prompt: str, answer: Any, key: str, difficulty: int, **meta: Any) -> Problem:
        return Problem(self.name, prompt, str(answer), {"key": key, "difficulty": difficulty, **meta})


class IntegerTask(Task):
    """A task whose answer is a whole number: any spelling of its value is right ("1,234", "1234.0"), and
    majority voting compares values."""

    def check(self, problem: Problem, answer: str) -> bool:
        v = parse_number(answer)
        return v is not None and v == int(problem.answer)

    def answer_key(self, problem: Problem, answer: str) -> str | None:
        v = parse_number(answer)
        return None if v is None else format_number(v)


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
