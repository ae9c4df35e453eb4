"""Unit conversion with whole numbers: one step, reversed (divide), two steps chained, and mixed amounts.

    How many minutes are in 4 hours?             1 hour = 60 minutes
                                                 4*60=240                answer: 240
    How many seconds are in 2 hours?             1 hour = 60 minutes
                                                 2*60=120
                                                 1 minute = 60 seconds
                                                 120*60=7200             answer: 7200
"""

from __future__ import annotations

import random

from nanoseek.data.tasks.checkers import format_number, parse_number
from nanoseek.data.tasks.problem import Problem, Solution, Task, plural

# (big unit, its plural, small unit, its plural, small units per big unit)
UNITS = (
    ("week", "weeks", "day", "days", 7),
    ("day", "days", "hour", "hours", 24),
    ("hour", "hours", "minute", "minutes", 60),
    ("minute", "minutes", "second", "seconds", 60),
    ("year", "years", "month", "months", 12),
    ("kilometer", "kilometers", "meter", "meters", 1000),
    ("meter", "meters", "centimeter", "centimeters", 100),
    ("centimeter", "centimeters", "millimeter", "millimeters", 10),
    ("kilogram", "kilograms", "gram", "grams", 1000),
    ("liter", "liters", "milliliter", "milliliters", 1000),
    ("dollar", "dollars", "cent", "cents", 100),
    ("foot", "feet", "inch", "inches", 12),
)
# chains of two conversions: indices into UNITS where one's small unit is the next one's big unit
CHAINS = tuple((i, j) for i, a in enumerate(UNITS) for j, b in enumerate(UNITS) if a[2] == b[0])
UNITS_LEVELS = (
    "one step, big to small unit, amounts 1-9",
    "one step either way, amounts up to 99 (small to big divides exactly)",
    "two steps chained, big to small, amounts 1-9",
    "a mixed amount (3 hours and 25 minutes) into the small unit",
    "two steps either way, amounts up to 99",
)


class Units(Task):
    name = "units"
    summary = "convert between units with whole numbers"
    levels = UNITS_LEVELS

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        if difficulty in (1, 2, 4):
            steps = [rng.randrange(len(UNITS))]
        else:
            steps = list(rng.choice(CHAINS))
        factor = 1
        for s in steps:
            factor *= UNITS[s][4]
        big, bigs, small, smalls = UNITS[steps[0]][0], UNITS[steps[0]][1], UNITS[steps[-1]][2], UNITS[steps[-1]][3]
        reverse = difficulty in (2, 5) and rng.random() < 0.5
        amount = rng.randint(1, 9) if difficulty in (1, 3, 4) else rng.randint(1, 99)
        extra = rng.randint(1, factor - 1) if difficulty == 4 else 0
        if reverse:  # small -> big: the amount of small units is a multiple of the factor
            prompt = f"How many {bigs} are in {plural(amount * factor, small, smalls)}?"
            answer, key = amount, f"{amount * factor} {smalls} -> {bigs}"
        else:
            have = plural(amount, big, bigs) + (f" and {plural(extra, small, smalls)}" if extra else "")
            prompt = f"How many {smalls} are in {have}?"
            answer, key = amount * factor + extra, f"{amount} {bigs} {extra} -> {smalls}"
        return self.make(prompt, answer, key, difficulty, steps=steps, amount=amount, extra=extra, reverse=reverse)

    def check(self, problem: Problem, answer: str) -> bool:
        v = parse_number(answer)
        return v is not None and v == int(problem.answer)

    def answer_key(self, problem: Problem, answer: str) -> str | None:
        v = parse_number(answer)
        return None if v is None else format_number(v)

    def solve(self, problem: Problem) -> Solution:
        m = problem.meta
        lines = []
        if m["reverse"]:
            value = m["amount"]
            for s in m["steps"]:
                value *= UNITS[s][4]
            for s in reversed(m["steps"]):
                big, _, _, smalls, f = UNITS[s]
                lines += [f"{f} {smalls} = 1 {big}", f"{value}/{f}={value // f}"]
                value //= f
        else:
            value = m["amount"]
            for s in m["steps"]:
                big, _, _, smalls, f = UNITS[s]
                lines += [f"1 {big} = {f} {smalls}", f"{value}*{f}={value * f}"]
                value *= f
            if m["extra"]:
                lines.append(f"{value}+{m['extra']}={value + m['extra']}")
                value += m["extra"]
        return Solution("\n".join(lines), str(value))
