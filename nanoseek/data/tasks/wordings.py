"""Many wordings per task, some kept out of training: a model should learn the task, not one template.

A task asks each problem in one of several dozen *frames* (format templates over the problem's fields: "What
is {expr}?", "Subtract {b} from {a}.", "Arrange {list} {dir}."), and the fields have surface forms of their own
(47 + 38, 47+38, 47 plus 38; a list as "9, 3, 7", "[9, 3, 7]" or "9, 3 and 7"). On top come a few things people
do when they type: a greeting or lead-in before the question, all lower case, no final punctuation.

Each frame is marked as used in training or *held out*. Three wording sets:

    canonical  the task's one original template (what `generate` gives by default, unchanged across versions)
    train      a frame drawn from the training frames, surface forms and lead-ins
    heldout    a frame drawn from the held-out frames only (its other choices from every pool): questions in
               words the model never saw for this task, to measure whether it learned the task

The rephrasing draws from its own random stream, so a problem list is the same problems in every wording set,
and never changes a problem's canonical key: the split of a problem does not depend on how it is asked.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any, Sequence

WORDING_SETS = ("canonical", "train", "heldout")

# What people put before a question (each ends a sentence, so the frame's capital letter still fits), and
# after it. Many of them, so that a model learns to read past words that do not matter.
LEAD_INS = ("Quick question: ", "Hi! ", "Hello. ", "Can you help me? ", "Hi, a question. ", "Please help. ",
            "Question: ", "Here is one for you. ", "Homework: ", "Try this: ", "Good morning! ", "Math time. ",
            "One more: ", "Next question. ", "Hey! ", "Exercise: ", "Let's see. ", "Task: ", "OK. ", "Hmm. ")
LEAD_INS_HELD_OUT = ("Hey there! ", "I have a question. ", "Help me with this one: ", "Can you solve this? ",
                     "Puzzle for you: ")
TAGS = (" Thanks!", " Thank you.", " Please.", " Thanks a lot.", " Show your work.")
TAGS_HELD_OUT = (" Cheers!", " Much appreciated.")
P_LEAD_IN, P_TAG, P_LOWER, P_NO_PUNCT = 0.25, 0.1, 0.15, 0.15


@dataclass(frozen=True)
class Frame:
    """A wording: `text` formats the task's fields. `when` names a tag the problem must carry (e.g. "+2", a
    sum of two terms) for the frame to fit; held_out frames are asked only in the held-out set."""

    text: str
    held_out: bool = False
    when: str = ""


def train(*texts: str, when: str = "") -> tuple[Frame, ...]:
    return tuple(Frame(t, False, when) for t in texts)


def held_out(*texts: str, when: str = "") -> tuple[Frame, ...]:
    return tuple(Frame(t, True, when) for t in texts)


def fields_of(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def pick_frame(frames: Sequence[Frame], tags: set[str], wording: str, rng: random.Random) -> int:
    """The index of a frame for this problem: one of the wording set's frames whose tag the problem has."""
    want_held_out = wording == "heldout"
    fit = [i for i, f in enumerate(frames) if f.held_out == want_held_out and (not f.when or f.when in tags)]
    if not fit:
        raise ValueError(f"no {wording} frame fits tags {sorted(tags)}")
    return rng.choice(fit)


def surface(text: str, rng: random.Random, wording: str) -> str:
    """A lead-in, a closing word, lower case or no final punctuation, each now and then, as typed questions
    have them."""
    if rng.random() < P_LEAD_IN:
        text = rng.choice(LEAD_INS + (LEAD_INS_HELD_OUT if wording == "heldout" else ())) + text
    if rng.random() < P_TAG:
        text += rng.choice(TAGS + (TAGS_HELD_OUT if wording == "heldout" else ()))
    if rng.random() < P_LOWER:
        text = text.lower()
    if rng.random() < P_NO_PUNCT:
        text = text.rstrip("?.!")
    return text


def rephrase(frames: Sequence[Frame], fields: dict[str, Any], tags: set[str], wording: str,
             rng: random.Random) -> tuple[str, int]:
    """(prompt, frame index) for a problem with these fields and tags, in the given wording set."""
    i = pick_frame(frames, tags, wording, rng)
    return surface(frames[i].text.format(**fields), rng, wording), i


def join_list(values: Sequence[int], rng: random.Random) -> str:
    """A list of numbers as people write one: "9, 3, 7", "9 3 7", "[9, 3, 7]", "9, 3 and 7" or "9,3,7"."""
    v = [str(x) for x in values]
    style = rng.randrange(5)
    if style == 0:
        return ", ".join(v)
    if style == 1:
        return " ".join(v)
    if style == 2:
        return "[" + ", ".join(v) + "]"
    if style == 3:
        return ", ".join(v[:-1]) + " and " + v[-1]
    return ",".join(v)
