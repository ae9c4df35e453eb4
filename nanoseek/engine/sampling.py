"""Sampling parameters and the per-request sampler: penalties, temperature, top-k, top-p, min-p, seeds.

The order follows vLLM: penalties on the raw logits, then temperature, then the truncations (top-k, top-p,
min-p; min-p is relative to the most likely token so its place among the filters does not matter for which
tokens it removes, top-p is applied to the top-k-renormalized distribution). Logprobs are reported from the
model's raw distribution (log-softmax of the unprocessed logits), which is what evaluation harnesses score.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import torch

from nanoseek.errors import SamplingError

# Temperatures below this sample greedily (vLLM's threshold): the distribution is one-hot to float precision
# anyway, and logits / 1e-300 would overflow float32 into inf and NaN probabilities.
GREEDY_BELOW = 1e-5
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0  # OpenAI semantics, over generated tokens: -p once a token appeared
    frequency_penalty: float = 0.0  # -f per occurrence in the generated tokens
    repetition_penalty: float = 1.0  # CTRL/HF semantics over prompt and generated tokens: /r if > 0 else *r
    seed: int | None = None  # same seed, prompt and model: same output
    stop: list[str] = field(default_factory=list)  # stop strings: never part of the returned text
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False  # keep going through the tokenizer's end-of-turn / end-of-text tokens
    logprobs: int | None = None  # per generated token: its logprob and this many top alternatives
    prompt_logprobs: int | None = None  # the same for every prompt token after the first
    skip_special_tokens: bool = True  # leave special tokens out of the text (token ids keep them)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def validate(self, vocab_size: int | None = None) -> "SamplingParams":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise SamplingError(msg)

        need(isinstance(self.max_new_tokens, int) and not isinstance(self.max_new_tokens, bool),
             f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        need(self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                 f"{name} must be a finite number, got {v!r}")
        need(self.temperature >= 0.0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        need(isinstance(self.top_k, int) and self.top_k >= 0,
             f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        need(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        need(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}")
        need(-2.0 <= self.presence_penalty <= 2.0, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        need(-2.0 <= self.frequency_penalty <= 2.0,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        need(self.repetition_penalty > 0.0, f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        need(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and 0 <= v <= 20), f"{name} must be an integer in [0, 20], got {v!r}")
        if vocab_size is not None:
            bad = [t for t in self.stop_token_ids if not 0 <= t < vocab_size]
            need(not bad, f"stop_token_ids {bad} are outside the vocabulary (0..{vocab_size - 1})")
        return self


class Sampler:
    """One request's sampling state: its generator (seeded, so runs reproduce) and the token counts the
    penalties need. Works on fp32 logit rows [V] or [n, V]."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: list[int], device: torch.device):
        self.params = params
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device).manual_seed(seed)
        self.counts = self.seen = None
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            if prompt_ids:
                self.seen[torch.tensor(prompt_ids, device=device)] = True

    def observe(self, token: int, undo: bool = False) -> None:
        """Record a generated token for the penalties (undo: forget a rejected speculative draft)."""
        if self.counts is not None:
            self.counts[token] += -1.0 if undo else 1.0
        if self.seen is not None and not undo:
            self.seen[token] = True

    def snapshot(self):
        return (None if self.counts is None else self.counts.clone(), None if self.seen is None else self.seen.clone())

    def restore(self, snap) -> None:
        self.counts, self.seen = snap

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if not p.penalized:
            return logits
        logits = logits.clone()
        if self.seen is not None:
            r = p.repetition_penalty
            hit = logits[..., self.seen]
            logits[..., self.seen] = torch.where(hit > 0, hit / r, hit * r)
        if self.counts is not None:
            logits -= p.frequency_penalty * self.counts + p.presence_penalty * (self.counts > 0).float()
        return _finite(logits)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution tokens are drawn from: penalties, temperature and truncation applied.
        Greedy requests get a one-hot on the argmax (what speculative acceptance needs)."""
        logits = self.penalize(logits.float())
        p = self.params
        if p.greedy:
            return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        return truncate(torch.softmax(_finite(logits / p.temperature), dim=-1), p.top_k, p.top_p, p.min_p)

    def sample(self, logits: torch.Tensor) -> int:
        """Next token from one logit row [V]."""
        if self.params.greedy:
            return int(self.penalize(logits.float()).argmax())
        return int(torch.multinomial(self.probs(logits), 1, generator=self.generator))

    def draw(self, probs: torch.Tensor) -> int:
        if self.params.greedy:
            return int(probs.argmax())
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator, device=self.generator.device))


def _finite(logits: torch.Tensor) -> torch.Tensor:
    """Logits overflowed to +-inf (a tiny repetition penalty divides by it) held at float32's largest values:
    softmax then keeps the tokens that overflowed upwards (evenly) instead of returning NaN."""
    big = torch.finfo(logits.dtype).max
    return logits.clamp(-big, big)


def truncate(probs: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Zero the tokens top-k / top-p / min-p remove and renormalize. probs [..., V]."""
    if top_k and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses it stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        drop[..., 0] = False  # the most likely token always stays (a top_p of 1e-300 is 0 in float32)
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    if min_p > 0.0:
        probs = torch.where(probs >= min_p * probs.amax(-1, keepdim=True), probs, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


@dataclass
class TokenLogprob:
    """A token's log-probability under the model and the most likely alternatives at that position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), most likely first


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> list[TokenLogprob]:
    """Raw-distribution logprobs of tokens [n] under logits [n, V], with the top-k alternatives."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(-1, tokens.view(-1, 1)).squeeze(-1).tolist()
    if k:
        top_v, top_i = lp.topk(k, dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(top_i.tolist(), top_v.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [TokenLogprob(t, c, top) for t, c, top in zip(tokens.tolist(), chosen, tops)]
