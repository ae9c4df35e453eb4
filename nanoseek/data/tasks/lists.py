"""Sorting a list of numbers, worked as selection sort: pick the smallest (or largest) of what is left.

    Sort from smallest to largest: 42, 7, 19.      7 is the smallest, left 42, 19
                                                   19 is the smallest, left 42
                                                   42 is the last          answer: 7, 19, 42
"""

from __future__ import annotations

import random
import re

from nanoseek.data.tasks.problem import Problem, Solution, Task

# difficulty -> (list length, largest value, whether descending order is asked too)
SORT_LEVELS = {1: (3, 9, False), 2: (4, 99, False), 3: (5, 99, True), 4: (6, 999, True), 5: (8, 999, True)}
_SEPARATOR = re.compile(r"\s*[,;]\s*|\s+")
_INTEGER = re.compile(r"-?[0-9]+")


def parse_list(text: str) -> list[int] | None:
    """Integers separated by commas and/or spaces, optionally in brackets ("7, 19, 42", "[7 19 42]")."""
    t = text.strip().removesuffix(".").strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1].strip()
    items = _SEPARATOR.split(t) if t else []
    if not items or not all(_INTEGER.fullmatch(x) for x in items):
        return None
    return [int(x) for x in items]


class Sort(Task):
    name = "sort"
    summary = "sort a list of numbers (ascending, or descending from level 3)"
    levels = tuple(f"{n} numbers up to {m}" + (", either order" if both else ", smallest first")
                   for n, m, both in SORT_LEVELS.values())

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        n, largest, both = SORT_LEVELS[difficulty]
        values = rng.sample(range(largest + 1), n)
        descending = both and rng.random() < 0.5
        order = "largest to smallest" if descending else "smallest to largest"
        answer = ", ".join(map(str, sorted(values, reverse=descending)))
        # the set and the direction are the problem; the order it is given in is phrasing
        key = " ".join(map(str, sorted(values))) + (" desc" if descending else " asc")
        return self.make(f"Sort from {order}: {', '.join(map(str, values))}.", answer, key, difficulty,
                         values=values, descending=descending)

    def check(self, problem: Problem, answer: str) -> bool:
        got = parse_list(answer)
        return got is not None and got == parse_list(problem.answer)

    def answer_key(self, problem: Problem, answer: str) -> str | None:
        got = parse_list(answer)
        return None if got is None else ", ".join(map(str, got))

    def solve(self, problem: Problem) -> Solution:
        left, desc = list(problem.meta["values"]), problem.meta["descending"]
        word, lines = "largest" if desc else "smallest", []
        while len(left) > 1:
            pick = max(left) if desc else min(left)
            left.remove(pick)
            lines.append(f"{pick} is the {word}, left {', '.join(map(str, left))}")
        lines.append(f"{left[0]} is the last")
        return Solution("\n".join(lines), problem.answer)
