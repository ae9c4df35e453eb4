"""One request's state in the engine: its sampler, its UTF-8-safe detokenizer, its output, and where it is.

A request moves waiting -> prefill (its prompt enters the cache, in chunks) -> decode (one token, or one
speculative round, per step) -> finished (stop token or string, max_new_tokens, aborted, or failed). Each step
that produces tokens for it yields one `Delta`; `Completion` is the whole answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from nanoseek.engine.cache import Slot
from nanoseek.engine.detokenize import TextStream
from nanoseek.engine.sampling import Sampler, SamplingParams, TokenLogprob, token_logprobs


@dataclass
class Delta:
    """One streaming increment of a request: new text (never a split character, never part of a stop string)
    and the token ids generated since the last increment; the last one carries finish_reason."""

    index: int  # the request's index in its generate/stream call, or its id for add_request
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (stop token or string), "length" (max_new_tokens), "abort", "error"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    logprobs: list[TokenLogprob] | None = None  # for token_ids, when SamplingParams.logprobs is set
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first increment only, when asked for
    error: str | None = None  # finish_reason "error": what failed (this request's step raised)


@dataclass
class Completion:
    index: int
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # None for the first prompt token
    drafted: int = 0  # speculative drafts proposed / accepted for this request
    accepted: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache instead of computed
    error: str | None = None  # finish_reason "error": what failed

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


class Request:
    def __init__(self, rid, prompt: list[int], params: SamplingParams, sampler: Sampler, stream: TextStream | None,
                 stop_ids: set[int]):
        self.id, self.prompt, self.params, self.sampler, self.stream = rid, prompt, params, sampler, stream
        self.stop_ids = stop_ids
        self.out = Completion(rid, prompt, logprobs=[] if params.logprobs is not None else None)
        self.finish: str | None = None
        self.slot: Slot | None = None
        self.computed = 0  # prompt tokens in the cache (reused or prefilled)
        self.pending = -1  # last generated token, not yet fed to the model
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        self.arrival = time.perf_counter()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        # speculative decoding: draft-cache positions [slot.mtp_len, length) still to be written, from these
        # main-model hiddens (pieces, concatenated when read) and the tokens that follow them; None: this
        # request does not speculate
        self.h_pend: list[torch.Tensor] | None = None
        self.next_pend: list[int] = []

    @property
    def tokens(self) -> list[int]:
        return self.out.token_ids

    @property
    def length(self) -> int:
        """Tokens in the main cache."""
        return self.slot.length

    @property
    def prefilled(self) -> bool:
        return self.computed == len(self.prompt)

    def emit(self, tokens: list[int], logits: torch.Tensor) -> Delta:
        """Append newly generated tokens (with the logits they were drawn from, [len(tokens), V]), stopping at
        the first one that finishes the request."""
        text, taken = [], []
        s = self
        for t in tokens:
            taken.append(t)
            s.sampler.observe(t)
            s.pending = t
            if t in s.stop_ids:
                s.finish, s.out.stop_reason = "stop", t
            elif s.stream is not None:
                text.append(s.stream.push(t))
                if s.stream.stopped is not None:
                    s.finish, s.out.stop_reason = "stop", s.stream.stopped
            if s.finish is None and len(s.out.token_ids) + len(taken) >= s.params.max_new_tokens:
                s.finish = "length"
            if s.finish is not None:
                if s.stream is not None:
                    text.append(s.stream.flush())
                break
        lps = None
        if s.params.logprobs is not None:
            lps = token_logprobs(logits[:len(taken)], torch.tensor(taken, device=logits.device), s.params.logprobs)
            s.out.logprobs.extend(lps)
        now = time.perf_counter()
        if s.first_token_time is None:
            s.first_token_time = now
        delta = Delta(s.id, "".join(text), taken, s.finish, s.out.stop_reason, lps)
        if s.prompt_logprobs is not None and s.out.prompt_logprobs is None:
            s.out.prompt_logprobs = delta.prompt_logprobs = s.prompt_logprobs
        s.out.token_ids.extend(taken)
        s.out.text += delta.text
        s.out.finish_reason = s.finish
        if s.finish is not None:
            s.finish_time = now
        return delta

    def abort(self) -> Delta:
        """End the request now (client gone, or asked): whatever text is held back is dropped."""
        self.finish = self.out.finish_reason = "abort"
        self.finish_time = time.perf_counter()
        return Delta(self.id, "", [], "abort")

    def fail(self, error: BaseException) -> Delta:
        """End the request because its step raised (its sampling, its text, or the batch it was in)."""
        self.finish = self.out.finish_reason = "error"
        self.out.error = f"{type(error).__name__}: {error}"
        self.finish_time = time.perf_counter()
        return Delta(self.id, "", [], "error", error=self.out.error)
