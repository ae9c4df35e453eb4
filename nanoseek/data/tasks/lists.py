"""Sorting a list of numbers, worked as selection sort: pick the smallest (or largest) of what is left.

    Sort from smallest to largest: 42, 7, 19.      7 is the smallest, left 42, 19
                                                   19 is the smallest, left 42
                                                   42 is the last          answer: 7, 19, 42
"""

from __future__ import annotations

import random
import re

from nanoseek.data.tasks.problem import Problem, Solution, Task
from nanoseek.data.tasks.wordings import held_out, join_list, train

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


# How the direction is said: as an adverbial ({dir}) or as the order's name ({order}).
_DIRECTIONS = {False: ("from smallest to largest", "from lowest to highest", "in ascending order",
                       "in increasing order", "smallest first", "from least to greatest"),
               True: ("from largest to smallest", "from highest to lowest", "in descending order",
                      "in decreasing order", "largest first", "from greatest to least")}
_ORDERS = {False: ("ascending order", "increasing order"), True: ("descending order", "decreasing order")}

SORT_FRAMES = (
    train("Sort {dir}: {list}.", "Sort these numbers {dir}: {list}", "Sort {list} {dir}.", "Put {list} in order, {dir}.",
          "Order these numbers {dir}: {list}.", "{list}: sort them {dir}.", "Please sort {list} {dir}.",
          "Sort the list {list} {dir}.", "Rearrange {list} {dir}.", "Can you sort {list} {dir}?", "Write {list} {dir}.",
          "Sort: {list} ({dir})", "Order {list} {dir}.", "Put these in order {dir}: {list}",
          "Sort the numbers {list} {dir}.", "List these numbers {dir}: {list}.", "Give {list} sorted {dir}.",
          "I have {list}. Sort them {dir}.", "sort {list} {dir}", "What is {list} sorted {dir}?",
          "Put {list} in {order}.", "Sort in {order}: {list}.", "Write these numbers in {order}: {list}")
    + train("Sort these numbers: {list}", "Sort {list}.", "Put {list} in order.", "Sort the list: {list}", when="asc")
    + held_out("Arrange {list} {dir}.", "Can you rank these {dir}: {list}?", "How would {list} look sorted {dir}?",
               "Reorder {list} {dir}, please.", "I need {list} ordered {dir}.", "Line up {list} {dir}.",
               "Arrange these in {order}: {list}"))


class Sort(Task):
    name = "sort"
    summary = "sort a list of numbers (ascending, or descending from level 3)"
    levels = tuple(f"{n} numbers up to {m}" + (", either order" if both else ", smallest first")
                   for n, m, both in SORT_LEVELS.values())
    frames = SORT_FRAMES

    def wording_fields(self, problem: Problem, rng: random.Random, wording: str) -> tuple[dict, set[str]]:
        desc = problem.meta["descending"]
        fields = {"list": join_list(problem.meta["values"], rng), "dir": rng.choice(_DIRECTIONS[desc]),
                  "order": rng.choice(_ORDERS[desc])}
        return fields, set() if desc else {"asc"}

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
        word = "largest" if desc else "smallest"
        # first the list and the order in one form, whatever the wording ("[14, 91, 7]" or "14 91 7", "in
        # decreasing order" or "from greatest to least")
        lines = [f"{word} first: {', '.join(map(str, left))}"]
        while len(left) > 1:
            pick = max(left) if desc else min(left)
            left.remove(pick)
            lines.append(f"{pick} is the {word}, left {', '.join(map(str, left))}")
        lines.append(f"{left[0]} is the last")
        return Solution("\n".join(lines), problem.answer)
