"""Word problems: a count that changes through a short story, one arithmetic step per event.

    Mia has 12 apples. Mia buys 5 more. Mia gives away 3.       12+5=17
    How many apples does Mia have now?                          17-3=14          answer: 14

The canonical key is the number chain alone (start, then each change), so the same chain told with another
name or object is the same problem and lands in the same split.
"""

from __future__ import annotations

import random

from nanoseek.data.tasks.checkers import format_number, parse_number
from nanoseek.data.tasks.problem import Problem, Solution, Task

NAMES = ("Mia", "Tom", "Ana", "Ben", "Lea", "Sam", "Eva", "Max", "Zoe", "Leo", "Ada", "Kai")
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "cards", "pencils", "shells", "stamps", "cookies")
GAIN = ("buys {k} more", "finds {k} more", "gets {k} more from a friend")
LOSS = ("gives away {k}", "loses {k}", "sells {k}")
BOXES = "gets {k} boxes with {m} {items} in each"
# difficulty -> (events, largest start, largest change, whether "k boxes of m" events occur)
WORD_LEVELS = {1: (1, 20, 9, False), 2: (2, 20, 9, False), 3: (2, 50, 20, True), 4: (3, 50, 20, True),
               5: (4, 99, 30, True)}


class WordProblem(Task):
    name = "word_problem"
    summary = "a count changed by a short story of events (+, -, boxes of k)"
    levels = tuple(f"{e} event{'s' if e > 1 else ''}, start up to {s}, changes up to {c}" +
                   (", boxes (k*m)" if boxes else "") for e, s, c, boxes in WORD_LEVELS.values())

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        n_events, max_start, max_change, boxes = WORD_LEVELS[difficulty]
        name, items = rng.choice(NAMES), rng.choice(ITEMS)
        start = count = rng.randint(2, max_start)
        events, sentences = [], [f"{name} has {count} {items}."]
        for _ in range(n_events):
            kinds = ["+", "-"] if count > 1 else ["+"]
            kind = rng.choice(kinds + (["box"] if boxes else []))
            if kind == "box":
                k, m = rng.randint(2, 5), rng.randint(2, 9)
                events.append(["box", k, m])
                sentences.append(f"{name} {BOXES.format(k=k, m=m, items=items)}.")
                count += k * m
            elif kind == "+":
                k = rng.randint(1, max_change)
                events.append(["+", k])
                sentences.append(f"{name} {rng.choice(GAIN).format(k=k)}.")
                count += k
            else:
                k = rng.randint(1, min(max_change, count - 1))
                events.append(["-", k])
                sentences.append(f"{name} {rng.choice(LOSS).format(k=k)}.")
                count -= k
        sentences.append(f"How many {items} does {name} have now?")
        key = f"{start} " + " ".join("".join(map(str, e)) if e[0] != "box" else f"+{e[1]}x{e[2]}" for e in events)
        return self.make(" ".join(sentences), count, key, difficulty, start=start, events=events)

    def check(self, problem: Problem, answer: str) -> bool:
        v = parse_number(answer)
        return v is not None and v == int(problem.answer)

    def answer_key(self, problem: Problem, answer: str) -> str | None:
        v = parse_number(answer)
        return None if v is None else format_number(v)

    def solve(self, problem: Problem) -> Solution:
        count, lines = problem.meta["start"], []
        for e in problem.meta["events"]:
            if e[0] == "box":
                k, m = e[1], e[2]
                lines += [f"{k}*{m}={k * m}", f"{count}+{k * m}={count + k * m}"]
                count += k * m
            elif e[0] == "+":
                lines.append(f"{count}+{e[1]}={count + e[1]}")
                count += e[1]
            else:
                lines.append(f"{count}-{e[1]}={count - e[1]}")
                count -= e[1]
        return Solution("\n".join(lines), str(count))
