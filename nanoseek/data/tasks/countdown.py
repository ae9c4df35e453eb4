"""Countdown: reach a target from given numbers with + - * /, each number at most once.

The checker reads the answer with its own small parser (never `eval`): integers, + - * /, parentheses and
spaces, nothing else (no unary minus, no powers, no decimals), at most 200 characters. The rules, as in the
TV game: each given number at most once (as often as it is given), every intermediate result a whole number
(division must be exact; dividing by zero is wrong); negatives are allowed. A trailing "= target" is accepted.

The worked solution is a search, the way a person does it: combine the two numbers whose result lands
closest to the target first, go deeper, and back off when a path misses:

    Make 46 from 3, 7, 25 using + - * / (each number at most once).
    try 25+7=32, 32+3=35, miss        try 25+7=32, 32*3=96, miss
    try 25+3=28, 28+7=35, miss        ...
    try 7*3=21, 25+21=46, hit         25+7*3=46      answer: 25+7*3
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

from nanoseek.data.tasks.problem import Problem, Solution, Task

MAX_CHARS = 200
MAX_DEPTH = 30
MAX_FAILS_SHOWN = 3  # failed paths a worked solution shows before the one that hits
# difficulty -> (how many numbers, largest number, largest target)
COUNTDOWN_LEVELS = {1: (2, 10, 100), 2: (3, 10, 100), 3: (3, 25, 200), 4: (4, 25, 500), 5: (4, 100, 1000),
                    6: (5, 100, 1000)}
_TOKEN = re.compile(r"\s*(?:([0-9]+)|([-+*/×÷()]))")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


class ExpressionError(ValueError):
    """An answer that is not a valid Countdown expression (the message says why)."""


@dataclass(frozen=True)
class Node:
    """A parsed expression: a number (op None) or an operation over two sub-expressions."""

    value: int
    op: str | None = None
    left: "Node | None" = None
    right: "Node | None" = None

    def numbers(self) -> list[int]:
        return [self.value] if self.op is None else self.left.numbers() + self.right.numbers()


def tokenize(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"longer than {MAX_CHARS} characters")
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ExpressionError(f"unexpected {text[pos:].lstrip()[:1]!r}: only integers, + - * / and parentheses")
        num, sym = m.groups()
        if num is not None and len(num) > 1 and num[0] == "0":
            raise ExpressionError(f"number {num} has a leading zero")
        tokens.append(num if num is not None else {"×": "*", "÷": "/"}.get(sym, sym))
        pos = m.end()
    return tokens


def parse(text: str) -> Node:
    """Parse and evaluate an expression, enforcing whole-number intermediate results."""
    tokens, pos = tokenize(text), 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def factor(depth: int) -> Node:
        nonlocal pos
        if depth > MAX_DEPTH:
            raise ExpressionError("nested too deeply")
        tok = peek()
        if tok is None:
            raise ExpressionError("ends early: a number or '(' is missing")
        pos += 1
        if tok == "(":
            node = expr(depth + 1)
            if peek() != ")":
                raise ExpressionError("a ')' is missing")
            pos += 1
            return node
        if tok[0] in "0123456789":
            return Node(int(tok))
        raise ExpressionError(f"expected a number or '(' but found {tok!r}")

    def binary(level: int, depth: int) -> Node:
        nonlocal pos
        node = factor(depth) if level == 2 else binary(2, depth)
        while peek() is not None and _PRECEDENCE.get(peek()) == level:
            op = tokens[pos]
            pos += 1
            right = factor(depth) if level == 2 else binary(2, depth)
            node = Node(combine(node.value, op, right.value), op, node, right)
        return node

    def expr(depth: int) -> Node:
        return binary(1, depth)

    node = expr(0)
    if pos != len(tokens):
        raise ExpressionError(f"unexpected {tokens[pos]!r} after the expression")
    return node


def combine(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise ExpressionError("division by zero")
    q = Fraction(a, b)
    if q.denominator != 1:
        raise ExpressionError(f"{a}/{b} is not a whole number")
    return int(q)


def evaluate(answer: str, numbers: list[int], target: int | None = None) -> int:
    """The value of a Countdown answer using only `numbers` (each at most as often as given).

    Raises ExpressionError saying what is wrong. A trailing "= N" must name `target` when one is given.
    """
    expr, eq, rhs = answer.partition("=")
    if eq:
        if "=" in rhs or not re.fullmatch(r"\s*[0-9]+\s*", rhs):
            raise ExpressionError("after '=' only the target may follow")
        if target is not None and int(rhs) != target:
            raise ExpressionError(f"claims {rhs.strip()}, the target is {target}")
    node = parse(expr)
    left = list(numbers)
    for n in node.numbers():
        if n not in left:
            raise ExpressionError(f"{n} is not given or used too often")
        left.remove(n)
    return node.value


def render(node: Node, parent: str | None = None, right_side: bool = False) -> str:
    """Expression text with only the parentheses it needs: a child binding weaker than its parent, or a
    right-hand child under - or / at the same level (a-(b-c), a/(b*c)); a+(b-c) is written a+b-c."""
    if node.op is None:
        return str(node.value)
    p = _PRECEDENCE[node.op]
    text = f"{render(node.left, node.op)}{node.op}{render(node.right, node.op, True)}"
    q = _PRECEDENCE[parent] if parent else 0
    needs = p < q or (right_side and p == q and parent in "-/")
    return f"({text})" if needs else text


def _candidates(pool: list[Node], target: int) -> list[tuple[Node, int, int]]:
    """Every (new node, i, j) from combining two pool entries, closest to the target first."""
    out = []
    for i in range(len(pool)):
        for j in range(len(pool)):
            a, b = pool[i], pool[j]
            if i == j:
                continue
            if i < j:  # + and * commute: one order; multiplying by 1 changes nothing
                out.append((Node(a.value + b.value, "+", a, b), i, j))
                if a.value > 1 and b.value > 1:
                    out.append((Node(a.value * b.value, "*", a, b), i, j))
            if a.value > b.value:
                out.append((Node(a.value - b.value, "-", a, b), i, j))
            if b.value > 1 and a.value % b.value == 0:
                out.append((Node(a.value // b.value, "/", a, b), i, j))
    out.sort(key=lambda c: (abs(c[0].value - target), c[0].op, c[1], c[2]))
    return out


def search(numbers: list[int], target: int, limit: int = 20000) -> tuple[list[list[Node]], list[Node] | None]:
    """Best-first depth-first search: (failed paths in the order tried, the path that hits or None).

    A path is the list of combinations made; it hits when a combination equals the target.
    """
    failed: list[list[Node]] = []
    visits = [0]

    def go(pool: list[Node], path: list[Node]) -> list[Node] | None:
        visits[0] += 1
        if visits[0] > limit:
            return None
        for node, i, j in _candidates(pool, target):
            step = path + [node]
            if node.value == target:
                return step
            rest = [n for k, n in enumerate(pool) if k not in (i, j)] + [node]
            if len(rest) == 1:
                failed.append(step)
                continue
            found = go(rest, step)
            if found:
                return found
        return None

    return failed, go([Node(n) for n in numbers], [])


def _steps(node: Node) -> list[Node]:
    """The operations of an expression, each after the ones it uses."""
    return [] if node.op is None else _steps(node.left) + _steps(node.right) + [node]


def _path_text(path: list[Node]) -> str:
    return ", ".join(f"{n.left.value}{n.op}{n.right.value}={n.value}" for n in path)


class Countdown(Task):
    name = "countdown"
    summary = "reach a target from given numbers with + - * / (each at most once)"
    levels = tuple(f"{k} numbers up to {m}, target up to {t}" for k, m, t in COUNTDOWN_LEVELS.values())

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        k, largest, max_target = COUNTDOWN_LEVELS[difficulty]
        while True:
            numbers = [rng.randint(1, largest) for _ in range(k)]
            pool = [Node(n) for n in numbers]
            while len(pool) > 1:  # combine random pairs until one value is left: a target with a solution
                a, b = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
                if a.value < b.value:
                    a, b = b, a
                ops = ["+"] + (["*"] if b.value > 1 else []) + (["-"] if a.value > b.value else []) + \
                      (["/"] if b.value > 1 and a.value % b.value == 0 else [])
                op = rng.choice(ops)
                pool.append(Node(combine(a.value, op, b.value), op, a, b))
            target = pool[0].value
            if 1 <= target <= max_target and target not in numbers:
                break
        key = " ".join(map(str, sorted(numbers))) + f" -> {target}"
        prompt = f"Make {target} from {', '.join(map(str, numbers))} using + - * / (each number at most once)."
        return self.make(prompt, render(pool[0]), key, difficulty, numbers=numbers, target=target)

    def check(self, problem: Problem, answer: str) -> bool:
        try:
            return evaluate(answer, problem.meta["numbers"], problem.meta["target"]) == problem.meta["target"]
        except ExpressionError:
            return False

    def answer_key(self, problem: Problem, answer: str) -> str | None:
        """The value reached (valid expressions that reach the same value vote together)."""
        try:
            return str(evaluate(answer, problem.meta["numbers"], problem.meta["target"]))
        except ExpressionError:
            text = " ".join(answer.split())
            return f"invalid: {text}" if text else None

    def direct_reasoning(self, problem: Problem) -> str:
        return f"{self.solve(problem).answer}={problem.meta['target']}"

    def solve(self, problem: Problem) -> Solution:
        target = problem.meta["target"]
        failed, hit = search(problem.meta["numbers"], target)
        if hit is None:  # cannot happen for generated problems (they are built from a solution)
            return Solution("no way found", problem.answer)
        lines = [f"try {_path_text(p)}, miss" for p in failed[:MAX_FAILS_SHOWN]]
        lines.append(f"try {_path_text(_steps(hit[-1]))}, hit")
        expression = render(hit[-1])
        lines.append(f"{expression}={target}")
        return Solution("\n".join(lines), expression)
