"""Named answer checkers: exact text, numeric (with tolerance) and multiple choice.

A checker compares a model's final answer with the reference answer. Bring-your-own problem files name one per
line (or take a default); the built-in tasks use `parse_number` for their numeric answers.

Specs are JSON values: a name ("numeric") or an object with options ({"name": "numeric", "tolerance": 0.01}).
  exact    whitespace runs collapsed and ends stripped; "ignore_case": true compares case-insensitively
  numeric  numbers compared by value: 1,234.5 = 1234.50, 3/4 = 0.75, -2 = -2.0; |answer - ref| <= tolerance x
           max(1, |ref|) (tolerance default 1e-6), in exact fractions. An answer that is not a number alone
           counts only if it holds exactly one number ("$18", "18 apples"); "17 or 18" is wrong (no credit
           for hedging).
  choice   one letter A-Z, case-insensitive: "B", "(B)", "B.", "B) Paris", "(B) Paris" read as B
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

NAMES = ("exact", "numeric", "choice")
DEFAULT_TOLERANCE = 1e-6

# A number: optional sign, digits (optionally in groups of three with commas), optional decimals, optional
# "/denominator" (a fraction). Not part of a longer word or number.
_DIGITS = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)"
_NUMBER = rf"[-+]?{_DIGITS}(?:\.[0-9]+)?(?:/{_DIGITS})?"
_NUMBER_ALONE = re.compile(rf"\s*({_NUMBER})\s*\.?\s*")
_NUMBER_IN_TEXT = re.compile(rf"(?<![\w.,/]){_NUMBER}(?![\w/]|[.,][0-9])")
_CHOICE = re.compile(r"\s*(?:\(([A-Za-z])\)(?:\s+\S.*)?|([A-Za-z])(?:[.:)](?:\s*\S.*)?)?)\s*", re.DOTALL)


def parse_number(text: str) -> Fraction | None:
    """The exact value of a text that is one number ("1,234.5", "-3/4", " 42. "), else None."""
    m = _NUMBER_ALONE.fullmatch(text)
    return _value(m.group(1)) if m else None


def find_number(text: str) -> Fraction | None:
    """The number in `text`: the whole text if it is one, else the only number inside it; None when there
    is none or more than one."""
    v = parse_number(text)
    if v is not None:
        return v
    found = _NUMBER_IN_TEXT.findall(text)
    return _value(found[0]) if len(found) == 1 else None


def _value(s: str) -> Fraction | None:
    num, _, den = s.replace(",", "").partition("/")
    try:
        v = Fraction(num)
        if den:
            d = Fraction(den)
            if d == 0:
                return None
            v /= d
    except (ValueError, ZeroDivisionError):
        return None
    return v


def format_number(v: Fraction) -> str:
    """A canonical text for a value: integers plain, others as a reduced fraction (voting keys)."""
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def normalize_text(text: str, ignore_case: bool = False) -> str:
    t = " ".join(text.split())
    return t.casefold() if ignore_case else t


def parse_choice(text: str) -> str | None:
    m = _CHOICE.fullmatch(text)
    return (m.group(1) or m.group(2)).upper() if m else None


@dataclass(frozen=True)
class Checker:
    """A named checker with its options: `check(answer, reference)` and the voting `key(answer)`."""

    name: str
    ignore_case: bool = False
    tolerance: float = DEFAULT_TOLERANCE

    def check(self, answer: str, reference: str) -> bool:
        if self.name == "exact":
            return normalize_text(answer, self.ignore_case) == normalize_text(reference, self.ignore_case)
        if self.name == "numeric":
            got, ref = find_number(answer), find_number(reference)
            if got is None or ref is None:
                return False
            # exactly, in fractions: a 401-digit number is past float range (and floats would round it)
            return abs(got - ref) <= Fraction(self.tolerance) * max(1, abs(ref))
        got = parse_choice(answer)
        return got is not None and got == parse_choice(reference)

    def key(self, answer: str) -> str | None:
        if self.name == "exact":
            return normalize_text(answer, self.ignore_case) or None
        if self.name == "numeric":
            v = find_number(answer)
            return None if v is None else format_number(v)
        return parse_choice(answer)

    def validate_reference(self, reference: str) -> str | None:
        """Why `reference` cannot be checked by this checker (None when it can)."""
        if self.name == "numeric" and find_number(reference) is None:
            return f"the answer {reference!r} is not a number (the numeric checker needs one)"
        if self.name == "choice" and parse_choice(reference) is None:
            return f"the answer {reference!r} is not a choice letter A-Z (the choice checker needs one)"
        if self.name == "exact" and not reference.strip():
            return "the answer is empty"
        return None

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name}
        if self.name == "exact" and self.ignore_case:
            spec["ignore_case"] = True
        if self.name == "numeric" and self.tolerance != DEFAULT_TOLERANCE:
            spec["tolerance"] = self.tolerance
        return spec


_OPTIONS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "exact": {"ignore_case": lambda v: isinstance(v, bool)},
    "numeric": {"tolerance": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")},
    "choice": {},
}


def make_checker(spec: Any) -> Checker:
    """A `Checker` from a spec (a name, {"name": ..., options}, or that object as JSON text); ValueError says
    what is wrong with it."""
    if isinstance(spec, Checker):
        return spec
    if isinstance(spec, str):
        spec = json.loads(spec) if spec.lstrip().startswith("{") else {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"a checker is a name ({', '.join(NAMES)}) or an object with \"name\", got {spec!r:.80}")
    name = spec["name"]
    if name not in NAMES:
        raise ValueError(f"unknown checker {name!r}; use one of {', '.join(NAMES)}")
    options = {k: v for k, v in spec.items() if k != "name"}
    for k, v in options.items():
        valid = _OPTIONS[name].get(k)
        if valid is None:
            allowed = ", ".join(_OPTIONS[name]) or "none"
            raise ValueError(f"checker {name!r} has no option {k!r} (options: {allowed})")
        if not valid(v):
            raise ValueError(f"checker {name!r}: bad value {v!r} for {k!r}")
    return Checker(name, **options)
