"""Word problems: a count that changes through a short story, one arithmetic step per event.

    Mia has 12 apples. Mia buys 5 more. Mia gives away 3.       12+5=17
    How many apples does Mia have now?                          17-3=14          answer: 14

The canonical key is the number chain alone (start, then each change), so the same chain told with another
name or object is the same problem and lands in the same split.
"""

from __future__ import annotations

import random

from nanoseek.data.tasks.arithmetic import work
from nanoseek.data.tasks.problem import IntegerTask, Problem, Solution
from nanoseek.data.tasks.wordings import held_out, train

NAMES = ("Mia", "Tom", "Ana", "Ben", "Lea", "Sam", "Eva", "Max", "Zoe", "Leo", "Ada", "Kai")
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "cards", "pencils", "shells", "stamps", "cookies")
GAIN = ("buys {k} more", "finds {k} more", "gets {k} more from a friend")
LOSS = ("gives away {k}", "loses {k}", "sells {k}")
BOXES = "gets {k} boxes with {m} {items} in each"
# Rephrased stories draw each sentence from these pools; "heldout" wording adds the held-out entries. The
# pools are wide so that a model learns a name, a thing and a verb as slots, not as a list to recognize.
NAMES_MORE = ("Alex", "Bea", "Carl", "Dana", "Eli", "Finn", "Gia", "Hugo", "Iris", "Jack", "Kim", "Liam", "Mara",
              "Nina", "Otto", "Pia", "Rosa", "Sara", "Theo", "Uma", "Vera", "Will", "Yara", "Zack", "Emma", "Luca",
              "Aiden", "Chloe", "Diego", "Grace", "Hana", "Jonas", "Maya", "Oscar", "Priya", "Ruby", "Tariq",
              "Wendy")
NAMES_HELD_OUT = ("Noah", "Lily", "Omar", "Ivy", "Ravi", "Nora")
ITEMS_MORE = ("pens", "balls", "shirts", "eggs", "candies", "bottles", "flowers", "toys", "rings", "keys", "cups",
              "plates", "socks", "hats", "tickets", "leaves", "bricks", "nuts", "cherries", "bananas", "stones",
              "letters", "photos", "crayons", "erasers", "badges")
ITEMS_HELD_OUT = ("buttons", "beads", "rocks", "toy cars")
STARTS = ("{name} has {n} {items}.", "{name} starts with {n} {items}.", "{name} owns {n} {items}.",
          "{name} has a box of {n} {items}.", "{name} keeps {n} {items} in a bag.", "There are {n} {items} with {name}.",
          "{name} collected {n} {items}.", "In the morning {name} has {n} {items}.")
STARTS_HELD_OUT = ("At first, {name} has {n} {items}.", "{name} begins the day with {n} {items}.")
GAINS = GAIN + ("is given {k} more", "wins {k} more", "picks up {k} more", "earns {k} more", "makes {k} more",
                "gets another {k}", "adds {k} more", "borrows {k} more", "finds another {k}")
GAINS_HELD_OUT = ("receives {k} more", "collects {k} more")
LOSSES = LOSS + ("gives {k} to a friend", "uses {k}", "drops {k}", "eats {k}", "breaks {k}", "spends {k}",
                 "gives {k} away", "loses another {k}", "shares {k} with a friend")
LOSSES_HELD_OUT = ("throws away {k}", "trades away {k}")
BOXES_ALL = (BOXES, "buys {k} packs of {m} {items}", "finds {k} bags with {m} {items} each",
             "gets {k} bags of {m} {items}", "buys {k} boxes, each with {m} {items}", "wins {k} sets of {m} {items}")
BOXES_HELD_OUT = ("receives {k} boxes of {m} {items}",)
THEN = ("{name} {event}.", "Then {name} {event}.", "Later, {name} {event}.", "Next, {name} {event}.",
        "After that, {name} {event}.", "Then {name} {event} too.", "In the afternoon {name} {event}.")
STARTS_ME = ("I have {n} {items}.", "I start with {n} {items}.", "I own {n} {items}.", "I have a box of {n} {items}.",
             "I keep {n} {items} in a bag.", "In the morning I have {n} {items}.")
STARTS_ME_HELD_OUT = ("At first, I have {n} {items}.",)
P_FIRST_PERSON = 0.2  # stories told by "I"
# the frames are the question; the story before it is {story}; "named" frames need a named story, "me" frames
# one told in the first person, the others fit both
WORD_FRAMES = (
    train("{story} How many {items} now?", "{story} How many {items} are there now?", "{story} So, how many {items}?",
          "{story} How many {items} in total now?", "Question: {story} How many {items} now?",
          "{story} What is the total number of {items} now?")
    + train("{story} How many {items} does {name} have now?", "{story} How many {items} does {name} have?",
            "{story} How many {items} does {name} end up with?", "{story} What is the number of {items} {name} has now?",
            "{story} Count {name}'s {items} now.", "{story} How many {items} does {name} have at the end?",
            "{story} Now how many {items} does {name} have?", "{story} Find how many {items} {name} has now.",
            "{story} What is {name}'s count of {items} now?", "{story} Tell me how many {items} {name} has.",
            "{story} How many {items} does {name} have after all that?", "{story} How many {items} does {name} hold now?",
            "{story} Work out how many {items} {name} has now.", "{story} What number of {items} does {name} have?",
            "{story} How many {items} does {name} own now?", "{story} {name} counts the {items}. How many are there?",
            "How many {items} does {name} have at the end? {story}", "{story} How many {items} does {name} keep?",
            when="named")
    + train("{story} How many {items} do I have now?", "{story} How many {items} do I have?",
            "{story} How many {items} do I end up with?", "{story} How many {items} do I have left?",
            "{story} Can you tell me how many {items} I have?", "How many {items} do I have at the end? {story}",
            when="me")
    + held_out("{story} So how many {items} are there now?", "Read this: {story} How many {items} are there?")
    + held_out("{story} How many {items} does {name} have in the end?",
               "{story} What's the total number of {items} {name} has now?",
               "{story} how many {items} does {name} have left", "{story} Can you tell how many {items} {name} has now?",
               "{story} What's {name}'s total?", when="named")
    + held_out("{story} How many {items} do I have in the end?", "{story} what's my total now", when="me"))


def _first_person(event: str) -> str:
    """A third-person event ("buys 3 more", "is given 2 more") told by "I" ("buy 3 more", "am given 2 more")."""
    verb, _, rest = event.partition(" ")
    return ("am" if verb == "is" else verb.removesuffix("s")) + " " + rest


# difficulty -> (events, largest start, largest change, whether "k boxes of m" events occur)
WORD_LEVELS = {1: (1, 20, 9, False), 2: (2, 20, 9, False), 3: (2, 50, 20, True), 4: (3, 50, 20, True),
               5: (4, 99, 30, True)}


class WordProblem(IntegerTask):
    name = "word_problem"
    summary = "a count changed by a short story of events (+, -, boxes of k)"
    levels = tuple(f"{e} event{'s' if e > 1 else ''}, start up to {s}, changes up to {c}" +
                   (", boxes (k*m)" if boxes else "") for e, s, c, boxes in WORD_LEVELS.values())
    frames = WORD_FRAMES

    def wording_fields(self, problem: Problem, rng: random.Random, wording: str) -> tuple[dict, set[str]]:
        m = problem.meta
        # held-out questions tell their stories with held-out names, things and verbs too (and the others)
        pool = (lambda a, b: a + b) if wording == "heldout" else (lambda a, b: a)
        me = rng.random() < P_FIRST_PERSON
        name = "I" if me else rng.choice(pool(NAMES + NAMES_MORE, NAMES_HELD_OUT))
        items = rng.choice(pool(ITEMS + ITEMS_MORE, ITEMS_HELD_OUT))
        starts = pool(STARTS_ME, STARTS_ME_HELD_OUT) if me else pool(STARTS, STARTS_HELD_OUT)
        sentences = [rng.choice(starts).format(name=name, n=m["start"], items=items)]
        for e in m["events"]:
            if e[0] == "box":
                event = rng.choice(pool(BOXES_ALL, BOXES_HELD_OUT)).format(k=e[1], m=e[2], items=items)
            else:
                event = rng.choice(pool(GAINS, GAINS_HELD_OUT) if e[0] == "+" else pool(LOSSES, LOSSES_HELD_OUT))
                event = event.format(k=e[1])
            sentences.append(rng.choice(THEN).format(name=name, event=_first_person(event) if me else event))
        return {"story": " ".join(sentences), "name": name, "items": items}, {"me" if me else "named"}

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

    def solve(self, problem: Problem) -> Solution:
        count, events = problem.meta["start"], problem.meta["events"]
        # first the story as one expression, whatever its verbs ("trades away 17" -> -17, "3 boxes of 4" -> +3*4)
        lines = [f"{count}" + "".join(f"+{e[1]}*{e[2]}" if e[0] == "box" else f"{e[0]}{e[1]}" for e in events)]
        for e in events:  # each step worked in columns, as the arithmetic task works it
            if e[0] == "box":
                k, m = e[1], e[2]
                lines += work(k, "*", m) + work(count, "+", k * m)
                count += k * m
            else:
                lines += work(count, e[0], e[1])
                count = count + e[1] if e[0] == "+" else count - e[1]
        return Solution("\n".join(lines), str(count))
