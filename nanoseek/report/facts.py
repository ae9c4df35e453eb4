"""Single-digit facts inside worked solutions: how often the model's own `a+b=`, `a-b=`, `a*b=` steps are right.

The tasks' worked solutions reduce every computation to one-digit facts (column addition, subtraction with
borrows, multiplication by one digit, short division). A wrong fact is a wrong answer however sound the
procedure, so counting them in the completions tells a procedure error from a fact error:

    fact_accuracy(["7+5=12, write 2, carry 1", "9-5=3, write 3"]) -> {"right": 1, "facts": 2, ...}

A fact is an expression of exactly two one-digit operands, `a+b=c`, `a-b=c` or `a*b=c`, not part of a longer
expression (so `4+8+1=13` and `12-3=9` are not counted; `7*8=56` is).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

_FACT = re.compile(r"(?<![\d+\-*/<])(\d)([+\-*])(\d)=(\d+)(?![\d+\-*/])")


def facts_in(text: str) -> list[tuple[str, bool]]:
    """(fact as written, whether it is right) for every one-digit fact in text."""
    out = []
    for m in _FACT.finditer(text):
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        out.append((m.group(0), value == c))
    return out


def fact_accuracy(completions: Iterable[str], examples: int = 5) -> dict[str, Any]:
    """{"right", "facts", "accuracy" (None without facts), "wrong": up to `examples` wrong facts as written}."""
    right = total = 0
    wrong: list[str] = []
    for text in completions:
        for fact, ok in facts_in(text):
            total += 1
            right += ok
            if not ok and len(wrong) < examples:
                wrong.append(fact)
    return {"right": right, "facts": total, "accuracy": right / total if total else None, "wrong": wrong}
