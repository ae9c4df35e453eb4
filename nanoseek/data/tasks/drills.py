"""Fact drills: the one-digit steps of the column procedures, written as the worked solutions write them.

Every worked solution reduces to a small table of steps: `7+5=`, a column with a carry `6+6+1=`, a borrow
`12-3=` and the column after it `5-1-4=`, a product `4*6=`, a product with a carry `4*6+1=`, and a short
division step's digit `55/6=9` and remainder `55-54=1`. A small model that gets a step wrong gets the answer wrong however sound its
procedure, and in a mixed corpus the rarer steps (a product with a carry of 5) come up only now and then. A
drill document lists such steps, one per line, drawn from the whole table (about 2,000 steps), so each is
seen many times at little cost in tokens. Pretraining text mixes them in (`nanoseek speedrun` does; see
docs/post-training.md, "Fact drills").

    drill_documents(1000, seed=0)[0]  ->  "6+6+1=13\\n4*7=28\\n15-8=7\\n..."
"""

from __future__ import annotations

import random


def steps() -> list[str]:
    """Every step of the table, each once."""
    out = []
    for a in range(10):
        for b in range(10):
            out.append(f"{a}+{b}={a + b}")
            out.append(f"{a}+{b}+1={a + b + 1}")  # a column with a carry
            out.append(f"{a}*{b}={a * b}")
            out += [f"{a}*{b}+{c}={a * b + c}" for c in range(1, 9)]  # a product's column with a carry
            if a >= b:
                out.append(f"{a}-{b}={a - b}")
            if a - 1 >= b:
                out.append(f"{a}-1-{b}={a - 1 - b}")  # the column after a borrow
            if a < b:
                out.append(f"{a + 10}-{b}={a + 10 - b}")  # the borrowing column
    for d in range(2, 10):  # short division: a partial dividend under 10 d, its digit and its remainder
        for n in range(10 * d):
            q = n // d
            out.append(f"{n}/{d}={q}")
            out.append(f"{n}-{q * d}={n - q * d}")
    return out


def drill_documents(n: int, seed: int = 0, per_document: int = 16) -> list[str]:
    """n documents of `per_document` steps each, drawn uniformly from the table (the same list for the same
    arguments)."""
    table = steps()
    rng = random.Random(f"nanoseek-drills|{seed}")
    return ["\n".join(rng.choice(table) for _ in range(per_document)) for _ in range(n)]
