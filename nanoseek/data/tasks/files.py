"""Problem files in and out: problems JSONL (RL and evaluation), SFT chat JSONL, pretraining text.

problems JSONL, one problem per line (what `read_problems` reads back, and what `nanoseek generate
--prompts-file` accepts as prompts, since each line has "prompt"):
    {"format_version": 1, "task": "arithmetic", "prompt": "What is 47 + 385?", "answer": "432",
     "meta": {"key": "47 385 +", "difficulty": 4, "terms": [47, 385], "ops": ["+"]}}
  Bring-your-own lines need only {"prompt", "answer"}, optionally "checker" and "reasoning".

SFT JSONL, one conversation per line, in the shape `Tokenizer.render_chat` takes:
    {"messages": [{"role": "user", "content": PROMPT},
                  {"role": "assistant", "reasoning": WORKED STEPS, "content": ANSWER}]}
  rendered as <|user|>PROMPT<|end|><|assistant|><think>WORKED STEPS</think>ANSWER<|end|>.

Pretraining text, one document per problem (or `group` problems per document), in one of two styles:
    plain   PROMPT / the worked steps / "Answer: ANSWER", one per line (see `extract_plain_answer`)
    chat    the chat rendering above as text; its special tokens become special ids only where the text is
            encoded with specials parsed (Tokenizer.encode(..., allow_special=True))
  A .jsonl path gets {"text": document} lines; any other path gets plain text with a blank line between
  documents (documents hold no blank line: read it with `--text-unit paragraph`).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from nanoseek.data.tasks.arithmetic import evaluation_steps
from nanoseek.data.tasks.custom import custom_problem
from nanoseek.data.tasks.problem import Problem
from nanoseek.data.tasks.registry import TASKS, worked_solution
from nanoseek.data.tasks.strategies import DEFAULT_MIX, assign, solution_in
from nanoseek.errors import DataError
from nanoseek.io import atomic_write_text

FORMAT_VERSION = 1
TEXT_STYLES = ("plain", "chat")


# ---- problems --------------------------------------------------------------------------------------------
def problem_record(problem: Problem) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **problem.to_dict()}


def problem_from_record(record: Any, where: str = "record", default_checker: Any = "exact") -> Problem:
    """A Problem from a problems-JSONL record: a built-in task's problem (as `problem_record` writes it) or
    a bring-your-own {"prompt", "answer", ["checker"], ["reasoning"]}. DataError names `where`."""
    if not isinstance(record, dict):
        raise DataError(f'{where}: expected a JSON object with "prompt" and "answer", got {type(record).__name__}')
    version = record.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DataError(f"{where}: format_version must be a whole number such as {FORMAT_VERSION}, got {version!r}")
    if version > FORMAT_VERSION:
        raise DataError(f"{where}: format_version {version!r} is newer than this nanoseek reads ({FORMAT_VERSION})")
    task = record.get("task", "custom")
    if task == "custom":
        return custom_problem(record, default_checker, where)
    if task not in TASKS:
        raise DataError(f"{where}: unknown task {task!r}; the tasks are: {', '.join(TASKS)} (leave \"task\" out "
                        "for your own problems)")
    meta = record.get("meta")
    if not isinstance(record.get("prompt"), str) or not isinstance(record.get("answer"), str) or \
            not isinstance(meta, dict):
        raise DataError(f'{where}: a {task} problem needs "prompt" and "answer" strings and a "meta" object')
    problem = Problem(task, record["prompt"], record["answer"], meta)
    fix = "(edited or damaged); regenerate it with `nanoseek tasks generate`"
    bad = _bad_meta(task, meta)
    if bad:
        raise DataError(f'{where}: this {task} problem\'s "meta" {bad} {fix}')
    try:  # the reference answer recomputed from meta, and the record's answer checked against it
        reference = _REFERENCE.get(task, lambda p: TASKS[task].solve(p).answer)(problem)
        ok = TASKS[task].check(Problem(task, problem.prompt, reference, meta), problem.answer)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
        reference, ok = None, False
    if not ok:
        if reference is not None and reference != problem.answer:
            raise DataError(f'{where}: this {task} problem\'s answer {problem.answer!r} disagrees with its "meta", '
                            f"which gives {reference!r} {fix}")
        raise DataError(f'{where}: this {task} problem\'s "meta" does not fit its answer {problem.answer!r} {fix}')
    return problem


# What a built-in task's meta must hold (the tasks read these fields; other keys are ignored), and the
# reference answer recomputed from it where the task's worked solution does not (countdown: the checker
# evaluates the answer against the meta's numbers and target itself).
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(v: Any, least: int = 1) -> bool:
    return isinstance(v, list) and len(v) >= least and all(_is_int(x) for x in v)


def _word_event(e: Any) -> bool:
    return isinstance(e, list) and ((len(e) == 2 and e[0] in ("+", "-") and _is_int(e[1])) or
                                    (len(e) == 3 and e[0] == "box" and _is_int(e[1]) and _is_int(e[2])))


_META = {
    "arithmetic": {"terms": lambda v: _ints(v, 2), "ops": lambda v: isinstance(v, list) and all(o in ("+", "-", "*")
                                                                                             for o in v)},
    "digit_sum": {"number": lambda v: _is_int(v) and v >= 0},
    "sort": {"values": _ints, "descending": lambda v: isinstance(v, bool)},
    "units": {"steps": _ints, "amount": _is_int, "extra": _is_int, "reverse": lambda v: isinstance(v, bool)},
    "word_problem": {"start": _is_int, "events": lambda v: isinstance(v, list) and all(map(_word_event, v))},
    "countdown": {"numbers": _ints, "target": _is_int},
}
_SHARED_META = {"key": lambda v: isinstance(v, str), "difficulty": _is_int, "wording": _is_int}


def _bad_meta(task: str, meta: dict[str, Any]) -> str | None:
    """What is wrong with a built-in task's meta (None when its fields have the types the task reads)."""
    for name, ok in _META.get(task, {}).items():
        if name not in meta:
            return f'has no "{name}"'
        if not ok(meta[name]):
            return f'has a malformed "{name}": {json.dumps(meta[name])[:80]}'
    for name, ok in _SHARED_META.items():
        if name in meta and not ok(meta[name]):
            return f'has a malformed "{name}": {json.dumps(meta[name])[:80]}'
    if task == "arithmetic" and len(meta["ops"]) != len(meta["terms"]) - 1:
        return f'has {len(meta["terms"])} "terms" but {len(meta["ops"])} "ops" (one fewer than the terms)'
    return None


def _arithmetic_answer(problem: Problem) -> str:
    return str(evaluation_steps(problem.meta["terms"], problem.meta["ops"])[-1][3])


_REFERENCE = {
    "arithmetic": _arithmetic_answer,
    "sort": lambda p: ", ".join(map(str, sorted(p.meta["values"], reverse=p.meta["descending"]))),
    "countdown": lambda p: p.answer,  # any expression that reaches the target is an answer
}


def read_jsonl(path: str | os.PathLike) -> Iterable[tuple[str, Any]]:
    """(where, object) per non-blank line; DataError names the file and line of bad JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        yield f"{path}:{n}", obj


def read_problems(path: str | os.PathLike, default_checker: Any = "exact") -> list[Problem]:
    """Every problem in a problems JSONL file (built-in or bring-your-own lines; `default_checker` for
    bring-your-own lines that name none)."""
    out = [problem_from_record(obj, where, default_checker) for where, obj in read_jsonl(path)]
    if not out:
        raise DataError(f"{path}: no problems in the file")
    return out


def write_problems(problems: Iterable[Problem], path: str | os.PathLike) -> int:
    return _write_lines(path, (json.dumps(problem_record(p), ensure_ascii=False) for p in problems))


# ---- SFT and chat --------------------------------------------------------------------------------------
def chat_messages(problem: Problem, with_solution: bool = True, strategy: str = "worked") -> list[dict[str, str]]:
    """The conversation for a problem: the user's prompt, then (with_solution) the assistant's reasoning, written
    in `strategy` (direct, worked, checked: nanoseek.data.tasks.strategies), and answer. Without the solution it
    is the prompt an RL rollout or evaluation starts from."""
    messages = [{"role": "user", "content": problem.prompt}]
    if with_solution:
        sol = solution_in(problem, strategy)
        if sol is None:
            raise DataError(f"problem {problem.id} ({problem.prompt[:60]!r}) has no worked solution; give "
                            'bring-your-own problems a "reasoning" field to write SFT data from them')
        messages.append({"role": "assistant", "reasoning": sol.reasoning, "content": sol.answer})
    return messages


def earlier_turns(earlier: Sequence[Problem]) -> list[dict[str, Any]]:
    """Earlier questions and their answers, as a chat client sends them before a new question: each answer's
    content only, its reasoning dropped (the chat page and `nanoseek chat` keep no reasoning in the history).
    The answers carry "weight": 0, so SFT trains on the new turn only and never on answers without reasoning."""
    out: list[dict[str, Any]] = []
    for p in earlier:
        sol = worked_solution(p)
        out += [{"role": "user", "content": p.prompt},
                {"role": "assistant", "content": p.answer if sol is None else sol.answer, "weight": 0}]
    return out


def earlier_problems(problems: Sequence[Problem], i: int, n: int) -> list[Problem]:
    """n other problems of the list to ask before problem i, the same for the same (list, i, n)."""
    if n and len(problems) < 2:
        raise DataError("earlier questions need at least two problems")
    rng = random.Random(f"earlier|{i}|{n}")
    return [problems[(i + rng.randrange(1, len(problems))) % len(problems)] for _ in range(n)]


def sft_record(problem: Problem, earlier: Sequence[Problem] = (), strategy: str = "worked") -> dict[str, Any]:
    return {"messages": earlier_turns(earlier) + chat_messages(problem, strategy=strategy)}


def write_sft(problems: Iterable[Problem], path: str | os.PathLike, follow_ups: float = 0.0, seed: int = 0,
              strategies: str | Mapping[str, float] = DEFAULT_MIX) -> int:
    """SFT conversations, one per problem. follow_ups: the share of them asked after one or two earlier
    questions of the set (answered), as a user goes on in one conversation: a model trained on single-turn
    chats alone answers a second question worse than a first. strategies: the mix of solution strategies
    ("direct=0.8,worked=0.2"; `strategies.assign(problems, mix, seed)` gives each problem's)."""
    problems = list(problems)
    if not 0.0 <= follow_ups <= 1.0:
        raise DataError(f"follow_ups must be a share between 0 and 1, got {follow_ups}", param="follow_ups")
    rng = random.Random(seed)
    written = assign(problems, strategies, seed)

    def record(i: int, p: Problem) -> dict[str, Any]:
        n = rng.choice((1, 2)) if len(problems) > 1 and rng.random() < follow_ups else 0
        return sft_record(p, earlier_problems(problems, i, n), written[i])

    return _write_lines(path, (json.dumps(record(i, p), ensure_ascii=False) for i, p in enumerate(problems)))


# ---- pretraining text ----------------------------------------------------------------------------------
def render_text(problem: Problem, style: str = "plain", strategy: str = "worked") -> str:
    """One problem with its solution (written in `strategy`) as a text document (see the module docstring for
    the styles)."""
    if style not in TEXT_STYLES:
        raise DataError(f"unknown text style {style!r}; use one of {', '.join(TEXT_STYLES)}", param="style")
    (user, assistant) = chat_messages(problem, strategy=strategy)
    if style == "chat":
        return (f"<|user|>{user['content']}<|end|><|assistant|><think>{assistant['reasoning']}</think>"
                f"{assistant['content']}<|end|>")
    return f"{user['content']}\n{assistant['reasoning']}\nAnswer: {assistant['content']}"


def plain_prompt(problem: Problem) -> str:
    """What to give a model trained only on plain-style text: the prompt line; it continues with the steps
    and an "Answer:" line (read it with `nanoseek.train.rewards.extract_plain_answer`)."""
    return f"{problem.prompt}\n"


PROMPT_STYLES = ("chat", "plain")


def prompt_ids(problem: Problem, tokenizer: Any, style: str = "chat") -> list[int]:
    """The token ids that ask `problem`: "chat", the chat template's user turn and the assistant's opening (a
    model after SFT or RL); "plain", <|bos|> and the prompt line, as a pretraining document starts."""
    if style == "chat":
        return tokenizer.render_chat(chat_messages(problem, with_solution=False), add_generation_prompt=True)[0]
    if style == "plain":
        bos = getattr(tokenizer, "bos_id", None)
        return ([bos] if bos is not None else []) + tokenizer.encode(plain_prompt(problem))
    raise DataError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}", param="style")


def write_text(problems: Iterable[Problem], path: str | os.PathLike, style: str = "plain", group: int = 1,
               strategies: str | Mapping[str, float] = DEFAULT_MIX, seed: int = 0) -> int:
    """Pretraining documents, `group` problems each, their solutions in the strategy mix; returns the number of
    documents."""
    if group < 1:
        raise DataError(f"group must be at least 1, got {group}", param="group")
    problems = list(problems)
    texts = [render_text(p, style, s) for p, s in zip(problems, assign(problems, strategies, seed))]
    return write_documents(["\n".join(texts[i:i + group]) for i in range(0, len(texts), group)], path)


def write_documents(docs: list[str], path: str | os.PathLike) -> int:
    """Text documents (no blank line inside one) as pretraining text: {"text"} lines for a .jsonl path, else
    blank-line-separated; returns the number of documents."""
    if str(path).endswith(".jsonl"):
        return _write_lines(path, (json.dumps({"text": d}, ensure_ascii=False) for d in docs))
    atomic_write_text(path, "\n\n".join(docs) + "\n")
    return len(docs)


def _write_lines(path: str | os.PathLike, lines: Iterable[str]) -> int:
    lines = list(lines)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
