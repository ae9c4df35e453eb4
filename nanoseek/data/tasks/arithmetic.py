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

from nanoseek.data.tasks.checkers import format_number, parse_number
from nanoseek.data.tasks.problem import Problem, Solution, Task

# difficulty -> (digits per operand, number of terms, operators, digits of the second factor of a product)
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


class Arithmetic(Task):
    name = "arithmetic"
    summary = "multi-digit +, -, * with schoolbook column work"
    levels = tuple(
        f"{t} terms of {d} digit{'s' if d > 1 else ''}, {' '.join(ops)}" + (f" (products by {m}-digit factors)"
                                                                            if "*" in ops else "")
        for d, t, ops, m in ARITHMETIC_LEVELS.values())

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        digits, n_terms, opset, mul_digits = ARITHMETIC_LEVELS[difficulty]
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        while True:
            ops = [rng.choice(opset) for _ in range(n_terms - 1)]
            terms = [rng.randint(lo, 10 ** digits - 1)]
            for op in ops:
                if op == "*":
                    terms.append(rng.randint(2, 10 ** mul_digits - 1))
                else:
                    terms.append(rng.randint(lo, 10 ** digits - 1))
            if n_terms == 2 and ops[0] == "-" and terms[0] < terms[1]:
                terms.reverse()
            steps = evaluation_steps(terms, ops)
            if all(r >= 0 and (op != "-" or a >= b) for a, op, b, r in steps):
                break
        text = " ".join(f"{t} {o}" for t, o in zip(terms, ops)) + f" {terms[-1]}"
        # + and * commute: 47 + 385 and 385 + 47 are one problem (one split)
        key = " ".join(map(str, sorted(terms))) + f" {ops[0]}" if n_terms == 2 and ops[0] in "+*" else text
        return self.make(f"What is {text}?", steps[-1][3], key, difficulty, terms=terms, ops=ops)

    def check(self, problem: Problem, answer: str) -> bool:
        v = parse_number(answer)
        return v is not None and v == int(problem.answer)

    def answer_key(self, problem: Problem, answer: str) -> str | None:
        v = parse_number(answer)
        return None if v is None else format_number(v)

    def solve(self, problem: Problem) -> Solution:
        steps = evaluation_steps(problem.meta["terms"], problem.meta["ops"])
        lines = [line for a, op, b, _ in steps for line in work(a, op, b)]
        return Solution("\n".join(lines), problem.answer)


class DigitSum(Task):
    name = "digit_sum"
    summary = "the sum of the digits of a number"
    levels = tuple(f"a number with {d} digits" for d in range(2, 10))

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        n = rng.randint(10 ** difficulty, 10 ** (difficulty + 1) - 1)
        return self.make(f"What is the sum of the digits of {n}?", sum(_digits(n)), str(n), difficulty, number=n)

    def check(self, problem: Problem, answer: str) -> bool:
        v = parse_number(answer)
        return v is not None and v == int(problem.answer)

    def answer_key(self, problem: Problem, answer: str) -> str | None:
        v = parse_number(answer)
        return None if v is None else format_number(v)

    def solve(self, problem: Problem) -> Solution:
        digits = [int(c) for c in str(problem.meta["number"])]
        lines, total = [], digits[0]
        for d in digits[1:]:
            lines.append(f"{total}+{d}={total + d}")
            total += d
        return Solution("\n".join(lines), str(total))
