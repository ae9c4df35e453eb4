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

from nanoseek.data.tasks.arithmetic import work, work_scale, work_unscale
from nanoseek.data.tasks.problem import IntegerTask, Problem, Solution, plural
from nanoseek.data.tasks.wordings import held_out, train

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

# {have}: the amount given ("4 hours", "3 hours and 25 minutes"); {want}: the unit asked for, plural.
UNITS_FRAMES = (
    train("How many {want} are in {have}?", "Convert {have} to {want}.", "Convert {have} into {want}.",
          "{have} is how many {want}?", "{have} = ? {want}", "How many {want} is {have}?", "Express {have} in {want}.",
          "What is {have} in {want}?", "{have} in {want}?", "Change {have} into {want}.", "Write {have} in {want}.",
          "Give {have} in {want}.", "{have} to {want}", "How many {want} are there in {have}?",
          "What is {have} expressed in {want}?", "Find the number of {want} in {have}.",
          "Please convert {have} to {want}.", "{have}: how many {want}?", "If you have {have}, how many {want} is that?",
          "Turn {have} into {want}.", "What's {have} in {want}?", "{have} equals how many {want}?",
          "Tell me how many {want} are in {have}.", "How many {want} do you get from {have}?")
    + held_out("What do you get if you convert {have} to {want}?", "I have {have}. How many {want} is that?",
               "Could you change {have} to {want}?", "how much is {have} in {want}", "{have} makes how many {want}?",
               "Work out how many {want} there are in {have}.", "Put {have} into {want}."))


class Units(IntegerTask):
    name = "units"
    summary = "convert between units with whole numbers"
    levels = UNITS_LEVELS
    frames = UNITS_FRAMES

    def wording_fields(self, problem: Problem, rng: random.Random | None, wording: str) -> tuple[dict, set[str]]:
        m = problem.meta  # (no random choices: the amounts and units are the problem)
        factor = 1
        for s in m["steps"]:
            factor *= UNITS[s][4]
        first, last = UNITS[m["steps"][0]], UNITS[m["steps"][-1]]
        if m["reverse"]:
            have, want = plural(m["amount"] * factor, last[2], last[3]), first[1]
        else:
            have = plural(m["amount"], first[0], first[1]) + (
                f" and {plural(m['extra'], last[2], last[3])}" if m["extra"] else "")
            want = last[3]
        return {"have": have, "want": want}, set()

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

    def solve(self, problem: Problem) -> Solution:
        m = problem.meta
        # first the question in one form, whatever its wording ("Change 6 hours into minutes." -> 6 hours to
        # minutes)
        fields, _ = self.wording_fields(problem, None, "canonical")
        lines = [f"{fields['have']} to {fields['want']}"]
        if m["reverse"]:
            value = m["amount"]
            for s in m["steps"]:
                value *= UNITS[s][4]
            for s in reversed(m["steps"]):
                big, _, _, smalls, f = UNITS[s]
                lines += [f"{f} {smalls} = 1 {big}", *work_unscale(value, f)]
                value //= f
        else:
            value = m["amount"]
            for s in m["steps"]:
                big, _, _, smalls, f = UNITS[s]
                lines += [f"1 {big} = {f} {smalls}", *work_scale(value, f)]
                value *= f
            if m["extra"]:
                lines += work(value, "+", m["extra"])
                value += m["extra"]
        return Solution("\n".join(lines), str(value))
