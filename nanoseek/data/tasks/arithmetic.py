"""Arithmetic with worked column methods, and digit sums.

Worked solutions show the schoolbook procedure one column per line, the way a child writes it, so a small
model can learn the algorithm instead of memorizing results:

    What is 47 + 385?          7+5=12, write 2, carry 1      (ones)
                               4+8+1=13, write 3, carry 1    (tens)
                               3+1=4, write 4                (hundreds)
                               47+385=432

Expressions with three terms are worked one operation at a time in the usual order (* before + and -, then
left to right), each operation with its own column work.
"""

from __future__ import annotations

import random

from nanoseek.data.tasks.problem import IntegerTask, Problem, Solution
from nanoseek.data.tasks.wordings import held_out, train

# difficulty -> (digits per operand (at most), number of terms, operators, digits of the second factor of a product)
SHORT_OPERAND_ODDS = 0.75  # the chance that an operand has its level's full number of digits
ARITHMETIC_LEVELS = {
    1: (1, 2, "+-", 1),
    2: (2, 2, "+-", 1),
    3: (2, 2, "+-*", 1),
    4: (3, 2, "+-*", 1),
    5: (2, 3, "+-*", 1),
    6: (3, 2, "+-*", 2),
    7: (3, 3, "+-*", 1),
    8: (4, 3, "+-*", 2),
}


def _digits(n: int) -> list[int]:
    """Digits of n >= 0, ones first."""
    return [int(c) for c in reversed(str(n))]


def work_add(a: int, b: int) -> list[str]:
    """Column addition of a + b (both >= 0), one line per column."""
    da, db = _digits(a), _digits(b)
    lines, carry = [], 0
    for i in range(max(len(da), len(db))):
        terms = [d[i] for d in (da, db) if i < len(d)] + ([carry] if carry else [])
        s = sum(terms)
        last = i == max(len(da), len(db)) - 1
        if len(terms) == 1:
            lines.append(f"write {s}")
        elif last:
            lines.append(f"{'+'.join(map(str, terms))}={s}, write {s}")
        else:
            lines.append(f"{'+'.join(map(str, terms))}={s}, write {s % 10}" + (", carry 1" if s >= 10 else ""))
        carry = s // 10
    return lines + [f"{a}+{b}={a + b}"]


def work_sub(a: int, b: int) -> list[str]:
    """Column subtraction of a - b (a >= b >= 0) with borrows, one line per column."""
    da, db = _digits(a), _digits(b)
    lines, borrow = [], 0
    for i in range(len(da)):
        top, bottom = da[i] - borrow, db[i] if i < len(db) else 0
        prefix = f"{da[i]}-{borrow}" if borrow else f"{da[i]}"
        if i >= len(db):
            if not borrow or top >= 0:
                lines.append(f"{prefix}={top}, write {top}" if borrow else f"write {top}")
                borrow = 0
                continue
        if top >= bottom:
            lines.append(f"{prefix}-{bottom}={top - bottom}, write {top - bottom}")
            borrow = 0
        else:
            lines.append(f"{prefix}<{bottom}, borrow: {top + 10}-{bottom}={top + 10 - bottom}, write "
                         f"{top + 10 - bottom}")
            borrow = 1
    return lines + [f"{a}-{b}={a - b}"]


def work_mul(a: int, b: int) -> list[str]:
    """a * b: a one-digit factor column by column; a longer one as partial products added up."""
    if b < 10:
        lines, carry, da = [], 0, _digits(a)
        for i, d in enumerate(da):
            v = d * b + carry
            expr = f"{d}*{b}" + (f"+{carry}" if carry else "")
            if i == len(da) - 1:
                lines.append(f"{expr}={v}, write {v}")
            else:
                lines.append(f"{expr}={v}, write {v % 10}" + (f", carry {v // 10}" if v >= 10 else ""))
            carry = v // 10
        return lines + [f"{a}*{b}={a * b}"]
    parts = [a * d * 10 ** i for i, d in enumerate(_digits(b))]
    lines = [f"{a}*{d * 10 ** i}={a * d * 10 ** i}" for i, d in enumerate(_digits(b))]
    total = parts[0]
    for p in parts[1:]:
        lines.append(f"{total}+{p}={total + p}")
        total += p
    return lines + [f"{a}*{b}={a * b}"]


def work_div(n: int, d: int) -> list[str]:
    """Short division of n by a one-digit d (exact), one line per quotient digit: the leading digits until they
    reach d, then each remainder joined by the next digit. Each line finds the digit, then its product and the
    remainder, as a person writes them down (the remainder alone in one step was where a model went wrong):

        552/6:  55/6=9, 9*6=54, 55-54=1  /  12/6=2, 2*6=12, 12-12=0  /  552/6=92
    """
    if n < 10:
        return [f"{n}/{d}={n // d}"]
    lines, current, started = [], 0, False
    for c in str(n):
        current = current * 10 + int(c)
        if current < d and not started:
            continue
        started = True
        q, r = divmod(current, d)
        lines.append(f"{current}/{d}={q}, {q}*{d}={q * d}, {current}-{q * d}={r}")
        current = r
    return lines + [f"{n}/{d}={n // d}"]


def one_digit_factors(f: int) -> tuple[list[int], int]:
    """f as one-digit factors (largest first) times a power of ten: 60 -> ([6], 10), 24 -> ([8, 3], 1)."""
    ten = 1
    while f % 10 == 0:
        f, ten = f // 10, ten * 10
    factors = []
    while f > 1:
        d = next(d for d in range(9, 1, -1) if f % d == 0)
        factors.append(d)
        f //= d
    return factors, ten


def work_scale(a: int, f: int) -> list[str]:
    """a * f for a unit factor f, by its one-digit factors (column work each) and then its power of ten."""
    factors, ten = one_digit_factors(f)
    if a < 10 and f < 10:
        return [f"{a}*{f}={a * f}"]
    plan = [f"{a}*{f}=" + "*".join(map(str, [a, *factors] + ([ten] if ten > 1 else [])))] \
        if len(factors) + (ten > 1) > 1 else []
    lines, value = plan, a
    for d in factors:
        lines += work_mul(value, d) if value >= 10 else [f"{value}*{d}={value * d}"]
        value *= d
    if ten > 1:
        lines.append(f"{value}*{ten}={value * ten}")
    return lines


def work_unscale(n: int, f: int) -> list[str]:
    """n / f (exact) for a unit factor f: drop the power of ten's zeros, then short division by each one-digit
    factor."""
    factors, ten = one_digit_factors(f)
    plan = [f"{n}/{f}=" + "/".join(map(str, [n] + ([ten] if ten > 1 else []) + factors))] \
        if len(factors) + (ten > 1) > 1 else []
    lines, value = plan, n
    if ten > 1:
        lines.append(f"{value}/{ten}={value // ten}")
        value //= ten
    for d in factors:
        lines += work_div(value, d)
        value //= d
    return lines


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def work(a: int, op: str, b: int) -> list[str]:
    if a < 10 and b < 10:  # one-digit facts need no columns
        return [f"{a}{op}{b}={apply(a, op, b)}"]
    return work_add(a, b) if op == "+" else work_sub(a, b) if op == "-" else work_mul(a, b)


def evaluation_steps(terms: list[int], ops: list[str]) -> list[tuple[int, str, int, int]]:
    """(a, op, b, result) for each operation, * first, then left to right."""
    terms, ops, steps = list(terms), list(ops), []
    for group in ("*", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] in group:
                r = apply(terms[i], ops[i], terms[i + 1])
                steps.append((terms[i], ops[i], terms[i + 1], r))
                terms[i:i + 2], ops[i:i + 1] = [r], []
            else:
                i += 1
    return steps


# How an operator is written: as a symbol (spaced or not), or in words.
_SYMBOLS = {"+": ("+",), "-": ("-",), "*": ("*", "x", "×")}
_WORDS = {"+": ("plus",), "-": ("minus",), "*": ("times", "multiplied by")}

ARITHMETIC_FRAMES = (
    train("What is {expr}?", "What's {expr}?", "Compute {expr}.", "{expr} = ?", "{expr} =", "{expr}",
          "Find {expr}.", "Work out {expr}.", "Evaluate {expr}.", "Solve {expr}.", "{expr}?",
          "What do you get from {expr}?", "Tell me what {expr} is.", "Find the value of {expr}.",
          "Give me the result of {expr}.", "What is the value of {expr}?", "Please compute {expr}.",
          "Work this out: {expr}", "Quick math: {expr}", "Result of {expr}?", "{expr} is what?",
          "Can you do {expr}?", "What is the answer to {expr}?", "Figure out {expr}.")
    + train("Add {a} and {b}.", "What is the sum of {a} and {b}?", "What do {a} and {b} add up to?",
            "If you add {b} to {a}, what do you get?", when="+2")
    + train("Subtract {b} from {a}.", "What is {a} take away {b}?", "What is the difference between {a} and {b}?",
            "Take {b} from {a}.", when="-2")
    + train("Multiply {a} by {b}.", "What is the product of {a} and {b}?", "What is {a} multiplied by {b}?",
            "{a} times {b}?", when="*2")
    + held_out("Calculate {expr}.", "how much is {expr}", "Can you work out {expr} for me?", "What does {expr} equal?",
               "I need the answer to {expr}.", "Determine {expr}.", "{expr} equals?")
    + held_out("Add up {a} and {b}.", when="+2")
    + held_out("Take {b} away from {a}.", when="-2")
    + held_out("How much is {a} times {b}?", when="*2"))


def render_expression(terms: list[int], ops: list[str], rng: random.Random) -> str:
    """47 + 38, 47+38 or 47 plus 38 (x and × for * too)."""
    style = rng.randrange(3)
    table = _WORDS if style == 2 else _SYMBOLS
    sep = "" if style == 1 else " "
    parts = [str(terms[0])]
    for op, t in zip(ops, terms[1:]):
        parts += [rng.choice(table[op]), str(t)]
    return sep.join(parts)


class Arithmetic(IntegerTask):
    name = "arithmetic"
    summary = "multi-digit +, -, * with schoolbook column work"
    levels = tuple(
        f"{t} terms of {'up to ' if d > 1 else ''}{d} digit{'s' if d > 1 else ''}, {' '.join(ops)}"
        + (f" (products by {m}-digit factors)" if "*" in ops else "")
        for d, t, ops, m in ARITHMETIC_LEVELS.values())
    frames = ARITHMETIC_FRAMES

    def wording_fields(self, problem: Problem, rng: random.Random, wording: str) -> tuple[dict, set[str]]:
        terms, ops = problem.meta["terms"], problem.meta["ops"]
        fields = {"expr": render_expression(terms, ops, rng), "a": terms[0], "b": terms[-1]}
        return fields, {f"{ops[0]}2"} if len(ops) == 1 else set()

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        digits, n_terms, opset, mul_digits = ARITHMETIC_LEVELS[difficulty]

        def operand() -> int:
            # mostly `digits` digits, now and then fewer, as people ask (94 - 3, 7 * 8)
            d = digits if digits == 1 or rng.random() < SHORT_OPERAND_ODDS else rng.randint(1, digits - 1)
            return rng.randint(0 if d == 1 else 10 ** (d - 1), 10 ** d - 1)

        while True:
            ops = [rng.choice(opset) for _ in range(n_terms - 1)]
            terms = [operand()]
            for op in ops:
                if op == "*":
                    terms.append(rng.randint(2, 10 ** mul_digits - 1))
                else:
                    terms.append(operand())
            if n_terms == 2 and ops[0] == "-" and terms[0] < terms[1]:
                terms.reverse()
            steps = evaluation_steps(terms, ops)
            if all(r >= 0 and (op != "-" or a >= b) for a, op, b, r in steps):
                break
        text = " ".join(f"{t} {o}" for t, o in zip(terms, ops)) + f" {terms[-1]}"
        # + and * commute: 47 + 385 and 385 + 47 are one problem (one split)
        key = " ".join(map(str, sorted(terms))) + f" {ops[0]}" if n_terms == 2 and ops[0] in "+*" else text
        return self.make(f"What is {text}?", steps[-1][3], key, difficulty, terms=terms, ops=ops)

    def solve(self, problem: Problem) -> Solution:
        terms, ops = problem.meta["terms"], problem.meta["ops"]
        steps = evaluation_steps(terms, ops)
        # first the expression as symbols, whatever the wording ("Take 39 away from 62." -> 62-39): reading the
        # question and computing are then two steps, and the computing looks the same for every wording
        expression = "".join(f"{t}{o}" for t, o in zip(terms, ops)) + str(terms[-1])
        lines = [expression] + [line for a, op, b, _ in steps for line in work(a, op, b)]
        return Solution("\n".join(lines), problem.answer)


DIGIT_SUM_FRAMES = (
    train("What is the sum of the digits of {n}?", "Sum the digits of {n}.", "What is the digit sum of {n}?",
          "Find the sum of the digits in {n}.", "digit sum of {n}", "What do the digits of {n} add up to?",
          "Add the digits of {n} together.", "Compute the digit sum of {n}.", "{n}: what is the sum of its digits?",
          "Sum of digits of {n}?", "Tell me the sum of the digits of {n}.", "What is the total of the digits of {n}?",
          "Find the digit sum: {n}", "Add all the digits of {n}.", "The digits of {n} sum to what?",
          "What's the digit sum of {n}?", "Work out the sum of the digits of {n}.", "Give the sum of the digits of {n}.",
          "How much do the digits of {n} add up to?", "Take {n} and add its digits.", "sum the digits: {n}",
          "What number do you get by adding the digits of {n}?", "Digit sum of {n} = ?", "Please add the digits of {n}.",
          "Calculate the digit sum of {n}.")
    + held_out("Add up the digits of {n}.", "If you add all the digits of {n}, what do you get?",
               "What's the total of the digits in {n}?", "how much is the sum of the digits of {n}",
               "Can you sum up the digits of {n} for me?", "I need the digit sum of {n}.",
               "Find what the digits of {n} add up to."))


class DigitSum(IntegerTask):
    name = "digit_sum"
    summary = "the sum of the digits of a number"
    levels = tuple(f"a number with {d} digits" for d in range(2, 10))
    frames = DIGIT_SUM_FRAMES

    def wording_fields(self, problem: Problem, rng: random.Random, wording: str) -> tuple[dict, set[str]]:
        return {"n": problem.meta["number"]}, set()

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        n = rng.randint(10 ** difficulty, 10 ** (difficulty + 1) - 1)
        return self.make(f"What is the sum of the digits of {n}?", sum(_digits(n)), str(n), difficulty, number=n)

    def direct_reasoning(self, problem: Problem) -> str:
        return "+".join(str(problem.meta["number"])) + f"={problem.answer}"

    def solve(self, problem: Problem) -> Solution:
        digits = [int(c) for c in str(problem.meta["number"])]
        lines, total = [], digits[0]
        for d in digits[1:]:
            lines.append(f"{total}+{d}={total + d}")
            total += d
        return Solution("\n".join(lines), str(total))
