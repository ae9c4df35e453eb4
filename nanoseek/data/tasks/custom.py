"""Bring-your-own problems: {"prompt", "answer"} records (GSM8K-style data you have) with a named checker.

A record may name its checker ("checker": "numeric" or {"name": "numeric", "tolerance": 0.01}) or take the
file's default, and may carry a worked solution ("reasoning") for SFT data. Such problems belong to the task
"custom"; they have no generator and no split of their own (the file is the split).
"""

from __future__ import annotations

import math
from typing import Any

from nanoseek.data.tasks.checkers import Checker, make_checker
from nanoseek.data.tasks.problem import Problem, Solution, Task
from nanoseek.errors import DataError


class Custom(Task):
    name = "custom"
    summary = "problems read from a JSONL file, checked by a named checker (exact, numeric, choice)"
    levels = ()
    generated = False

    def _checker(self, problem: Problem) -> Checker:
        return make_checker(problem.meta.get("checker", "exact"))

    def check(self, problem: Problem, answer: str) -> bool:
        return self._checker(problem).check(answer, problem.answer)

    def answer_key(self, problem: Problem, answer: str) -> str | None:
        return self._checker(problem).key(answer)

    def solve(self, problem: Problem) -> Solution | None:
        reasoning = problem.meta.get("reasoning")
        return None if reasoning is None else Solution(reasoning, problem.answer)


def custom_problem(record: dict[str, Any], default_checker: Any, where: str) -> Problem:
    """A custom Problem from a {"prompt", "answer", ["checker"], ["reasoning"]} record; DataError names
    `where` (file:line) and the field that is wrong."""
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    prompt, answer = record.get("prompt"), record.get("answer")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f'{where}: "prompt" must be a non-empty string')
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f'{where}: "answer" must be a string or a number, got {type(answer).__name__}')
    if isinstance(answer, float) and not math.isfinite(answer):  # JSON's NaN and Infinity: no answer to check
        raise DataError(f'{where}: "answer" must be a finite number, got {answer}; write it as a string if you mean '
                        "the text")
    answer = str(answer)
    spec = record.get("checker", meta.get("checker", default_checker))
    try:
        checker = make_checker(spec)
    except ValueError as e:
        raise DataError(f'{where}: "checker": {e}') from None
    why = checker.validate_reference(answer)
    if why:
        raise DataError(f"{where}: {why}")
    reasoning = record.get("reasoning", meta.get("reasoning"))
    if reasoning is not None and not isinstance(reasoning, str):
        raise DataError(f'{where}: "reasoning" must be a string')
    out = {k: v for k, v in meta.items() if k not in ("checker", "reasoning")}
    out["checker"] = checker.to_spec()
    if reasoning is not None:
        out["reasoning"] = reasoning
    return Problem("custom", prompt, answer, out)
