"""How figures read, in the terminal and in the report card alike: counts, FLOPs, dollars, durations, shares;
and counts as people write them (14.8T, 500B, 2e12) read back.

    si(14.8e12) -> "14.8T"      flop(2.6e11) -> "260 GFLOP"     dollars(5.3e6) -> "$5.3M"
    duration(5400) -> "1.5 h"   pct(0.413) -> "41.3%"           sci(2.664e6) -> "2.66e6"
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

from nanoseek.errors import DataError, UserError

SUFFIXES = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
MAX_COUNT = 1e30  # tokens or GPU-hours: a million times any run's, and far from float overflow in the products


def _scaled(x: float, units: tuple[tuple[str, float], ...]) -> str:
    """x in the largest unit it reaches, 3 significant digits (whole numbers from 100 up)."""
    for suffix, scale in units:
        if abs(x) >= scale:
            v = x / scale
            return (f"{v:,.0f}" if v >= 99.95 else f"{v:.3g}") + suffix
    return f"{x:.3g}" + (" " if units[0][0].startswith(" ") else "")


def si(x: float) -> str:
    """Counts (tokens, parameters, hours, dollars), 3 significant digits: 14.8T, 2.71M, 512, 0.0123."""
    return _scaled(x, (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)))


def flop(x: float) -> str:
    """FLOPs or FLOP/s with SI prefixes: 261 GFLOP, 989 TFLOP."""
    return _scaled(x, ((" E", 1e18), (" P", 1e15), (" T", 1e12), (" G", 1e9), (" M", 1e6), (" K", 1e3))) + "FLOP"


def sci(x: float) -> str:
    """Scientific notation, 3 significant digits: 2.66e6."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    m, e = f"{x:.3e}".split("e")
    return f"{float(m):.3g}e{int(e)}"


def dollars(x: float) -> str:
    """$5.3M, $12.5, $0.04; "<$0.01" for less than a cent."""
    return f"${si(x)}" if x >= 1 else f"${x:.2f}" if x >= 0.01 else "<$0.01" if x > 0 else "$0"


def duration(seconds: float) -> str:
    """A wall time in the unit people say it in: 45 s, 12.3 min, 1.5 h, 3.2 days, 4 years."""
    if seconds >= 2 * 365 * 86400:
        return f"{seconds / (365 * 86400):,.0f} years"
    if seconds >= 100 * 86400:
        return f"{seconds / 86400:,.0f} days"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3g} s"


def plural(n: int, word: str, words: str | None = None) -> str:
    """1 process, 2 processes."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"


def pct(x: float) -> str:
    """A share as a percentage: 41.3%, 0.0%; two significant digits below 0.1% (0.042%)."""
    return f"{100 * x:.1f}%" if abs(x) >= 0.001 or x == 0 else f"{100 * x:.2g}%"


def parse_count(text: str, param: str, integer: bool = True) -> float:
    """'14.8T', '500B', '1.5M', '2e12', '2,664K' -> a positive number (an int >= 1 if `integer`); a UserError
    naming `param` otherwise."""
    m = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]?)\s*", text)
    if text.strip().startswith("-"):
        raise UserError(f"{param} must be positive, got {text}", param=param)
    if not m or m.group(2).upper() not in SUFFIXES:
        raise UserError(f"{param}: cannot read {text!r}; write a number with an optional K, M, B or T suffix "
                        "(14.8T, 500B, 1.5M, 2e12)", param=param)
    value = float(m.group(1).replace(",", "").replace("_", "")) * SUFFIXES[m.group(2).upper()]
    if not value <= MAX_COUNT:  # inf too: 1e400 reads as inf
        raise UserError(f"{param} {text} is too large: at most 1e30 (figures past it overflow the "
                        "FLOP counts)", param=param)
    if value < (1 if integer else 0) or value == 0:
        raise UserError(f"{param} must be {'at least 1' if integer else 'positive'}, got {text}", param=param)
    return round(value) if integer else value


def parse_named_numbers(spec: str | Mapping[str, float], names: Iterable[str], kind: str, example: str,
                        param: str) -> dict[str, float]:
    """{"accuracy": 1.0, "format": 0.1} from "accuracy=1,format=0.1" or a mapping: every name one of `names` (a
    bare name counts 1), every number finite; a DataError naming `param` otherwise. kind: what a name is
    ("reward", "strategy"), for the messages."""
    names = tuple(names)
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = []
        for part in filter(None, (s.strip() for s in str(spec).split(","))):
            name, eq, w = part.partition("=")
            try:
                items.append((name.strip(), float(w) if eq else 1.0))
            except ValueError:
                raise DataError(f"{kind} weight {part!r}: the weight must be a number ({example})",
                                param=param) from None
    out: dict[str, float] = {}
    for name, w in items:
        if name not in names:
            raise DataError(f"unknown {kind} {name!r}; use {', '.join(names)}, e.g. {example}", param=param)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise DataError(f"{kind} {name}: {w!r} is not a finite number", param=param)
        if name in out:
            raise DataError(f"{kind} {name} is named twice in {spec!r}; name each once, e.g. {example}", param=param)
        out[name] = float(w)
    return out


def parse_fraction(text: str, param: str) -> float:
    """'0.4' or '40%' -> 0.4, within (0, 1] (an MFU, a share); a UserError naming `param` otherwise."""
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise UserError(f"{param}: cannot read {text!r}; give a fraction such as 0.4, or 40%", param=param) from None
    if not (0 < v <= 1):
        raise UserError(f"{param} must be in (0, 1] (a fraction: 0.4 or 40% for 40%), got {text}", param=param)
    return v
