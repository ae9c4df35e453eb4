"""The tasks by name, and the functions everything else calls: generate, check, solve, vote key."""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Mapping, Sequence

from nanoseek.data.tasks.arithmetic import Arithmetic, DigitSum
from nanoseek.data.tasks.countdown import Countdown
from nanoseek.data.tasks.custom import Custom
from nanoseek.data.tasks.lists import Sort
from nanoseek.data.tasks.problem import SPLITS, Problem, Solution, Task, split_of
from nanoseek.data.tasks.units import Units
from nanoseek.data.tasks.word import WordProblem
from nanoseek.data.tasks.wordings import WORDING_SETS
from nanoseek.errors import DataError

TASKS: Mapping[str, Task] = MappingProxyType({t.name: t for t in (
    Arithmetic(), Countdown(), Sort(), DigitSum(), Units(), WordProblem(), Custom())})
# consecutive draws that bring no new problem before generation gives up (the problem space is used up)
_MAX_MISSES = 20_000


def get_task(task: str | Task) -> Task:
    """A task by name (or a Task object, returned as it is: your own tasks need no registration)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; the tasks are: {', '.join(TASKS)}", param="task")
    return TASKS[task]


def generated_tasks() -> list[str]:
    return [name for name, t in TASKS.items() if t.generated]


def parse_difficulty(text: str | int | Sequence[int], task: str | Task | None = None) -> tuple[int, ...]:
    """Levels from 3, "3", "1-3" or "1,2,4" (a mix: each problem draws its level uniformly), checked
    against the task's range when one is given."""
    if isinstance(text, int):
        levels = (text,)
    elif isinstance(text, str):
        try:
            levels = ()
            for part in text.replace(" ", "").split(","):
                lo, dash, hi = part.partition("-")
                levels += tuple(range(int(lo), int(hi) + 1)) if dash else (int(lo),)
        except ValueError:
            raise DataError(f"difficulty {text!r}: give a level (2), a range (1-3) or a list (1,2,4)",
                            param="difficulty") from None
    else:
        levels = tuple(int(x) for x in text)
    if not levels:
        raise DataError(f"difficulty {text!r} names no level", param="difficulty")
    if task is not None:
        t = get_task(task)
        bad = [d for d in levels if not 1 <= d <= t.max_difficulty]
        if bad:
            raise DataError(f"task {t.name} has difficulty levels 1-{t.max_difficulty}, not {bad[0]}",
                            param="difficulty")
    return tuple(dict.fromkeys(levels))


def generate(task: str | Task, split: str, n: int, difficulty: int | str | Sequence[int] = 1, *, seed: int = 0,
             unique: bool = True, wording: str = "canonical") -> list[Problem]:
    """`n` problems of `task` from `split` ("train", "val" or "test"), the same list for the same arguments.

    Problems are drawn until n of them fall into `split` (decided by their canonical key alone, so splits
    never overlap). unique: no canonical key twice; DataError when the split holds fewer than n problems at
    this difficulty (then ask for fewer, mix in harder levels, or pass unique=False to allow repeats).
    A longer list for the same arguments starts with the shorter one. wording: "canonical" (the task's one
    original template), "train" (one of dozens of wordings) or "heldout" (wordings kept out of training data);
    the same problems in each (nanoseek.data.tasks.wordings).
    """
    t = get_task(task)
    if not t.generated:
        raise DataError(f"task {t.name} is read from files, not generated; pick one of "
                        f"{', '.join(generated_tasks())}", param="task")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}", param="split")
    if n < 1:
        raise DataError(f"the number of problems must be at least 1, got {n}", param="n")
    if wording not in WORDING_SETS:
        raise DataError(f"unknown wording {wording!r}; use one of {', '.join(WORDING_SETS)}", param="wording")
    levels = parse_difficulty(difficulty, t)
    rng = random.Random(f"nanoseek-tasks|{t.name}|{split}|{seed}")
    # its own stream: the problems drawn do not depend on the wording
    wording_rng = random.Random(f"nanoseek-wording|{t.name}|{split}|{seed}|{wording}")
    out: list[Problem] = []
    seen: set[str] = set()
    misses = 0
    while len(out) < n:
        p = t.sample(rng, levels[0] if len(levels) == 1 else rng.choice(levels))
        if split_of(t.name, p.key) != split or (unique and p.key in seen):
            misses += 1
            if misses > _MAX_MISSES:
                lv = "-".join(map(str, levels)) if len(levels) > 1 else str(levels[0])
                raise DataError(f"only {len(out)} distinct {t.name} problems at difficulty {lv} exist in the "
                                f"{split} split, asked for {n}: ask for fewer, add harder levels, or allow "
                                "repeats", param="n")
            continue
        misses = 0
        seen.add(p.key)
        out.append(t.phrase(p, wording, wording_rng))
    return out


def generate_up_to(task: str | Task, split: str, n: int, difficulty: int | str | Sequence[int] = 1, *,
                   seed: int = 0, wording: str = "canonical") -> list[Problem]:
    """`generate`'s n distinct problems, or all the split holds when that is fewer (a low level has few): a
    longer list starts with a shorter one, so a bisection on the count finds the longest."""
    try:
        return generate(task, split, n, difficulty, seed=seed, wording=wording)
    except DataError as e:
        if e.param != "n":
            raise
    lo, hi = 0, n - 1  # lo: known to succeed (0 trivially), hi: the most that might
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            generate(task, split, mid, difficulty, seed=seed, wording=wording)
            lo = mid
        except DataError:
            hi = mid - 1
    return generate(task, split, lo, difficulty, seed=seed, wording=wording) if lo else []


def problem_set(names: Sequence[str], split: str, n: int, difficulty: int | str | Sequence[int] = 1, *,
                seed: int = 0) -> tuple[list[Problem], dict[str, int]]:
    """n distinct problems of each task, or all its split holds where that is fewer; returns them and the
    tasks that had fewer, with how many they had."""
    problems, short = [], {}
    for name in names:
        found = generate_up_to(name, split, n, difficulty, seed=seed)
        if len(found) < n:
            short[name] = len(found)
        problems += found
    return problems, short


def check_disjoint(trained: Mapping[str, Sequence[Problem]], held_out: Mapping[str, Sequence[Problem]]) -> None:
    """Raise DataError when a held-out problem's canonical key is also in a set trained on (by name, e.g.
    {"SFT": sft}): the splits make that impossible, and this checks it rather than trusting it."""
    seen = {(p.task, p.key): name for name, problems in trained.items() for p in problems}
    for name, problems in held_out.items():
        for p in problems:
            if (p.task, p.key) in seen:
                raise DataError(f"held-out {name} problem {p.id} ({p.prompt[:60]!r}) is also in the "
                                f"{seen[(p.task, p.key)]} data: an evaluation on it would not be held out")


def check_answer(problem: Problem, answer: str | None) -> bool:
    """Whether an extracted final answer solves `problem` (None, no answer, is wrong)."""
    return answer is not None and get_task(problem.task).check(problem, answer)


def worked_solution(problem: Problem) -> Solution | None:
    """The step-by-step reasoning and final answer (None for a custom problem without reasoning)."""
    return get_task(problem.task).solve(problem)


def answer_key(problem: Problem, answer: str | None) -> str | None:
    """What majority voting compares (answers meaning the same get the same key); None: no answer."""
    return None if answer is None else get_task(problem.task).answer_key(problem, answer)

