"""Rule-checked rewards for reasoning RL: accuracy, format and a random control, and answer extraction.

The answer format (what SFT data teaches and what these functions read): the assistant writes its reasoning
between <think> and </think>, then the bare final answer and nothing else:

    <think>7+5=12, write 2, carry 1 ...</think>432

These are the chat template's assistant turn for {"reasoning": ..., "content": "432"} (nanoseek/tokenizer.py).
<think> and </think> are special tokens, so a completion must be decoded with special tokens kept
(skip_special_tokens=False) for these functions to see them; a trailing <|end|> or <|eos|> is ignored. An
answer wrapped as <answer>432</answer> after </think> (DeepSeek-R1-Zero's template) is read too. When the
prompt ends with a prefilled <think>, the completion is read as if it began with one.

Every reward is a plain function (prompt, completion, reference) -> float, where reference is a
`nanoseek.data.tasks.Problem`, a problems-JSONL record, or a bare answer string (compared exactly, whitespace
normalized). `Rewards` combines them with weights and reports each one, for logging.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Mapping

from nanoseek.data.tasks import Problem, answer_key, check_answer, problem_from_record
from nanoseek.data.tasks.strategies import strategy_of
from nanoseek.errors import DataError
from nanoseek.units import parse_named_numbers

THINK, THINK_END = "<think>", "</think>"
ANSWER, ANSWER_END = "<answer>", "</answer>"
END_MARKERS = ("<|end|>", "<|eos|>")
_ANSWER_TAG = re.compile(r"\s*<answer>(.*)</answer>\s*", re.DOTALL)

RewardFn = Callable[[str, str, Any], float]


# ---- reading completions ---------------------------------------------------------------------------------
def _clean(prompt: str, completion: str) -> str:
    """The completion without trailing end-of-turn markers, with a prompt-prefilled <think> put back."""
    text = completion.rstrip()
    while text.endswith(END_MARKERS):
        text = text[: text.rfind("<|")].rstrip()
    if prompt.rstrip().endswith(THINK) and THINK not in text:
        text = THINK + text
    return text


def split_completion(completion: str, prompt: str = "") -> tuple[str | None, str | None]:
    """(reasoning, answer part): the text inside <think>...</think> and the text after the last </think>.

    Without </think>: an opened <think> means the model never finished thinking (answer None); no tags at
    all means the model answered directly (reasoning None, the whole text is the answer part).
    """
    text = _clean(prompt, completion)
    if THINK_END in text:
        head, _, tail = text.rpartition(THINK_END)
        start = head.find(THINK)
        return (head[start + len(THINK):] if start >= 0 else head), tail
    if THINK in text:
        return text[text.find(THINK) + len(THINK):], None
    return None, text


def extract_answer(completion: str, prompt: str = "") -> str | None:
    """The final answer of a completion: the text after </think> (inside <answer>...</answer> when the
    model used those tags), stripped; None when there is none (unfinished thinking, empty answer, an
    <answer> tag left open)."""
    _, answer = split_completion(completion, prompt)
    if answer is None:
        return None
    if ANSWER in answer or ANSWER_END in answer:
        start, end = answer.rfind(ANSWER), answer.rfind(ANSWER_END)
        if start < 0 or end < start:
            return None
        answer = answer[start + len(ANSWER):end]
    answer = answer.strip()
    return answer or None


def extract_plain_answer(text: str) -> str | None:
    """The answer of a plain-style text completion (pretraining text: steps, then "Answer: X"): the rest of
    the first line that starts with "Answer:"."""
    return split_plain(text)[1]


def split_plain(text: str) -> tuple[str | None, str | None]:
    """(reasoning, answer) of a plain-style completion: the lines before the first "Answer:" line and the rest
    of that line (None, None without one)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Answer:"):
            return "\n".join(lines[:i]), line[len("Answer:"):].strip() or None
    return None, None


def score(problem: Problem, completion: str, style: str = "chat") -> dict[str, Any]:
    """One completion (special tokens kept) checked against its problem: the extracted answer, whether it is
    right, its vote key, whether it is well formed (chat: <think>reasoning</think>answer; plain: an "Answer:"
    line) and the strategy its reasoning followed (direct, worked, checked, or None without reasoning;
    nanoseek.data.tasks.strategies)."""
    answer = extract_answer(completion) if style == "chat" else extract_plain_answer(completion)
    well_formed = is_well_formed(completion) if style == "chat" else answer is not None
    return {"answer": answer, "correct": check_answer(problem, answer), "key": answer_key(problem, answer),
            "format": well_formed, "strategy": strategy_of(reasoning_of(completion, style))}


def reasoning_of(completion: str, style: str = "chat") -> str | None:
    """The reasoning of a completion: between <think> and </think> (chat), or the lines before "Answer:"
    (plain); None where there is none."""
    return split_completion(completion)[0] if style == "chat" else split_plain(completion)[0]


def as_problem(reference: Any) -> Problem:
    """A Problem from a reward's reference: a Problem, a problems-JSONL record, or a bare answer string."""
    if isinstance(reference, Problem):
        return reference
    if isinstance(reference, dict):
        return problem_from_record(reference, "reference")
    if isinstance(reference, str):
        return Problem("custom", "", reference, {"checker": {"name": "exact"}})
    raise DataError(f"a reward reference is a Problem, a problem record or an answer string, got "
                    f"{type(reference).__name__}")


# ---- rewards ---------------------------------------------------------------------------------------------
def accuracy_reward(prompt: str, completion: str, reference: Any) -> float:
    """1.0 when the extracted final answer passes the problem's checker, else 0.0."""
    return 1.0 if check_answer(as_problem(reference), extract_answer(completion, prompt)) else 0.0


def is_well_formed(completion: str, prompt: str = "") -> bool:
    """<think>, non-empty reasoning, </think>, then a non-empty answer (bare, or one <answer>...</answer>),
    each tag exactly once, nothing before <think> but whitespace."""
    text = _clean(prompt, completion).lstrip()
    if not text.startswith(THINK) or text.count(THINK) != 1 or text.count(THINK_END) != 1:
        return False
    reasoning, _, answer = text[len(THINK):].partition(THINK_END)
    if not reasoning.strip() or not answer.strip():
        return False
    if ANSWER in answer or ANSWER_END in answer:
        m = _ANSWER_TAG.fullmatch(answer)
        return bool(m) and bool(m.group(1).strip()) and ANSWER not in m.group(1) and ANSWER_END not in m.group(1)
    return True


def format_reward(prompt: str, completion: str, reference: Any = None) -> float:
    """1.0 for a well-formed completion (`is_well_formed`), else 0.0; the answer's correctness is ignored."""
    return 1.0 if is_well_formed(completion, prompt) else 0.0


def random_reward(prompt: str, completion: str, reference: Any = None, *, seed: int = 0, p: float = 0.5) -> float:
    """The control experiment's reward: 1.0 with probability p, else 0.0, decided by a hash of (seed, prompt,
    completion), so it is deterministic and carries no information about correctness."""
    h = hashlib.blake2b(f"{seed}\x00{prompt}\x00{completion}".encode("utf-8"), digest_size=8).digest()
    return 1.0 if int.from_bytes(h, "little") / 2 ** 64 < p else 0.0


def plain_accuracy_reward(prompt: str, completion: str, reference: Any) -> float:
    """accuracy_reward for a plain-style completion (steps, then "Answer: X", as the pretraining text writes)."""
    return 1.0 if check_answer(as_problem(reference), extract_plain_answer(completion)) else 0.0


def plain_format_reward(prompt: str, completion: str, reference: Any = None) -> float:
    """1.0 for a plain-style completion with reasoning lines, then an "Answer:" line with an answer."""
    reasoning, answer = split_plain(completion)
    return 1.0 if reasoning and reasoning.strip() and answer else 0.0


REWARDS: Mapping[str, RewardFn] = {"accuracy": accuracy_reward, "format": format_reward, "random": random_reward}
# a completion in the pretraining text's plain style is scored by these (RL straight from a base model: R1-Zero)
PLAIN_REWARDS: Mapping[str, RewardFn] = {"accuracy": plain_accuracy_reward, "format": plain_format_reward,
                                         "random": random_reward}
REWARDS_BY_STYLE: Mapping[str, Mapping[str, RewardFn]] = {"chat": REWARDS, "plain": PLAIN_REWARDS}
DEFAULT_WEIGHTS = "accuracy=1,format=0.1"  # a small format weight: format alone must never pay like a right answer


def parse_weights(spec: str | Mapping[str, float]) -> dict[str, float]:
    """{"accuracy": 1.0, "format": 0.1} from "accuracy=1,format=0.1" (a bare name weighs 1)."""
    weights = parse_named_numbers(spec, REWARDS, "reward", DEFAULT_WEIGHTS, "reward")
    if not weights:
        raise DataError(f"no reward named in {spec!r}; e.g. {DEFAULT_WEIGHTS}", param="reward")
    return weights


class Rewards:
    """Weighted sum of named rewards. scores() gives each reward (unweighted) and "reward", the total. style:
    "chat" (<think>reasoning</think>answer) or "plain" (steps, then "Answer: X")."""

    def __init__(self, weights: str | Mapping[str, float] = DEFAULT_WEIGHTS, *, seed: int = 0, style: str = "chat"):
        if style not in REWARDS_BY_STYLE:
            raise DataError(f"reward style must be one of {', '.join(REWARDS_BY_STYLE)}, got {style!r}", param="style")
        self.weights = parse_weights(weights)
        self.seed, self.style = seed, style

    def scores(self, prompt: str, completion: str, reference: Any) -> dict[str, float]:
        out = {}
        for name in self.weights:
            fn = REWARDS_BY_STYLE[self.style][name]
            out[name] = fn(prompt, completion, reference, seed=self.seed) if name == "random" else \
                fn(prompt, completion, reference)
        out["reward"] = sum(self.weights[n] * out[n] for n in self.weights)
        return out

    def __call__(self, prompt: str, completion: str, reference: Any) -> float:
        return self.scores(prompt, completion, reference)["reward"]

    def __repr__(self) -> str:
        return f"Rewards({', '.join(f'{k}={v:g}' for k, v in self.weights.items())})"
