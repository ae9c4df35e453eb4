"""How a solution is written: directly, worked step by step, or worked and then checked (and redone when the
check fails). Real text mixes these; so can the generated corpora and SFT sets, and RL can then select the
strategy that pays (docs/post-training.md, "Strategies").

    direct    the reasoning is one line, the problem restated with its answer:      47+385=432
    worked    the task's worked solution (column work, one step per line), as before
    checked   the worked solution, then a check of its last step by the inverse operation. In a fixed share
              of problems (CHECK_SLIP, chosen by the problem's key) the first attempt miscopies the last
              result; the check catches it and the step is redone and checked again:

                  7+5=12, write 2, carry 1 / ... / 47+385=442
                  check: 2-5 ... 442-385=57 / 57, not 47, redo
                  47+385=432
                  check: ... 432-385=47 / 47, right

              A problem whose last step has no inverse here (a sort, a Countdown search, a product by a
              factor of ten or more) is written worked: `assign` then counts it as worked, so the shares it
              gives are the ones actually written.

A mix is "direct=0.8,worked=0.2" (shares, normalized); `pick` draws one strategy per problem.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Iterable, Mapping

from nanoseek.data.tasks.arithmetic import work, work_div
from nanoseek.data.tasks.problem import Problem, Solution
from nanoseek.data.tasks.registry import get_task, worked_solution
from nanoseek.errors import DataError
from nanoseek.units import parse_named_numbers

STRATEGIES = ("direct", "worked", "checked")
DEFAULT_MIX = "worked"
CHECK_SLIP = 0.3  # share of checked solutions whose first attempt is wrong (and is caught and redone)
_STEP = re.compile(r"^(\d+)([-+*])(\d+)=(\d+)$")


def parse_mix(spec: str | Mapping[str, float]) -> dict[str, float]:
    """{"direct": 0.8, "worked": 0.2} from "direct=0.8,worked=0.2" (a bare name weighs 1; shares are
    normalized to sum to 1)."""
    mix = parse_named_numbers(spec, STRATEGIES, "strategy", "direct=0.8,worked=0.2", "strategies")
    for name, w in mix.items():
        if w < 0:
            raise DataError(f"strategy {name}: share {w:g} must be >= 0", param="strategies")
    total = sum(mix.values())
    if total <= 0:
        raise DataError(f"strategy mix {spec!r} gives no strategy a share; e.g. direct=0.8,worked=0.2",
                        param="strategies")
    return {k: v / total for k, v in mix.items() if v > 0}


def pick(mix: Mapping[str, float], rng: random.Random) -> str:
    """One strategy, drawn with the mix's shares."""
    names = list(mix)
    return names[0] if len(names) == 1 else rng.choices(names, weights=[mix[n] for n in names])[0]


def solution_in(problem: Problem, strategy: str = "worked") -> Solution | None:
    """The problem's solution written in `strategy` (None when the task has no worked solution)."""
    if strategy not in STRATEGIES:
        raise DataError(f"unknown strategy {strategy!r}; use {', '.join(STRATEGIES)}", param="strategies")
    sol = worked_solution(problem)
    if sol is None or strategy == "worked":
        return sol
    if strategy == "direct":
        return Solution(get_task(problem.task).direct_reasoning(problem), sol.answer)
    lines = sol.reasoning.splitlines()
    step = _STEP.match(lines[-1]) if lines else None
    if step is None:
        return sol  # the last step is no single operation: written worked
    a, op, b, r = int(step[1]), step[2], int(step[3]), int(step[4])
    check = _check(a, b, r, op)
    if check is None:
        return sol  # no inverse to check this step by: written worked
    slipped = _slip(problem, a, op, b, r)
    if slipped is None:
        lines += check
    else:  # the first attempt miscopies the result; the check catches it, the step is redone and checked
        lines[-1:] = [f"{a}{op}{b}={slipped}", *_check(a, b, slipped, op), lines[-1], *check]
    return Solution("\n".join(lines), sol.answer)


def _check(a: int, b: int, r: int, op: str) -> list[str] | None:
    """The check of a op b = r by the inverse operation, ending in its verdict; None where there is none."""
    if op == "+":
        lines, back = work(r, "-", b), r - b
    elif op == "-":
        lines, back = work(r, "+", b), r + b
    elif 2 <= b <= 9 and r % b == 0:
        lines, back = work_div(r, b), r // b
    else:
        return None
    verdict = f"{back}, right" if back == a else f"{back}, not {a}, redo"
    return ["check:", *lines, verdict]


def _slip(problem: Problem, a: int, op: str, b: int, r: int) -> int | None:
    """The miscopied result of a checked solution's first attempt, for CHECK_SLIP of the problems (by key)."""
    h = int.from_bytes(hashlib.blake2b(f"slip|{problem.task}|{problem.key}".encode(), digest_size=8).digest(),
                       "little")
    if h % 1000 >= CHECK_SLIP * 1000:
        return None
    # off by a column's digit (or by one factor for a product, so the check's division stays exact)
    return r + b if op == "*" else r + (1, 10)[(h >> 16) % 2]


def assign(problems: Iterable[Problem], mix: str | Mapping[str, float] = DEFAULT_MIX, seed: int = 0) -> list[str]:
    """The strategy each problem is written in under `mix`, the same for the same arguments: drawn per
    problem, then named by what the text shows (`strategy_of`): "worked" where "checked" was drawn but the task
    has no check for the problem, "direct" for a worked solution of one line (a two-digit digit sum)."""
    shares, rng, out = parse_mix(mix), random.Random(f"strategies|{seed}"), []
    for p in problems:
        s = pick(shares, rng)
        sol = solution_in(p, s)
        out.append((strategy_of(sol.reasoning) if sol is not None else None) or s)
    return out


def strategy_of(reasoning: str | None) -> str | None:
    """Which strategy a solution's reasoning (or a completion's, between <think> and </think>) followed: checked
    (a line starting "check"), direct (one line), else worked; None without reasoning."""
    if reasoning is None:
        return None
    lines = [line for line in reasoning.splitlines() if line.strip()]
    if not lines:
        return None
    if any(line.lstrip().startswith("check") for line in lines):
        return "checked"
    return "direct" if len(lines) == 1 else "worked"


def shares(strategies: Iterable[str | None]) -> dict[str, float]:
    """The share of each strategy in a list of them (every STRATEGIES key, and "none" for None: a completion
    without reasoning)."""
    counts = dict.fromkeys((*STRATEGIES, "none"), 0)
    for s in strategies:
        counts[s or "none"] += 1
    n = sum(counts.values())
    return {k: v / n if n else 0.0 for k, v in counts.items()}


def summary(problems: Iterable[Problem], mix: str | Mapping[str, float] = DEFAULT_MIX, seed: int = 0) -> str:
    """ "79% direct, 21% worked": the strategies `assign` writes the problems in."""
    return describe(shares(assign(problems, mix, seed)))


def describe(strategy_shares: Mapping[str, float]) -> str:
    """ "80% direct, 20% worked": the shares above zero, in STRATEGIES order."""
    return ", ".join(f"{v:.0%} {k}" for k, v in strategy_shares.items() if v > 0)
