"""The scheduler: requests come and go while others run (continuous batching), one model step at a time.

Each `step()`:
1. takes in new requests and aborts (both may come from other threads: `add_request` and `abort` only put
   them in an inbox under a lock);
2. runs one decode step (or one speculative round) for every request that is decoding, so running
   requests advance every step, whatever else arrives;
3. admits waiting requests into free cache rows (reusing the longest cached prefix of their prompt) and
   spends what is left of the step's token budget on their prompts, in chunks: a long prompt takes several
   steps and never stalls the decoding requests for more than one chunk;
4. samples the first token of every request whose prompt is now in, and moves it to decoding;
5. releases the rows of finished and aborted requests at once (kept as cached prefixes).

The waiting queue is bounded: `add_request` raises QueueFullError (HTTP 503) when it is full.

Failures stay with the requests they touch: a request whose own work raises (its sampler, its detokenizer)
ends alone with finish_reason "error", and a forward that raises ends the requests of its batch that way; the
others, and the requests still waiting, go on. Failed requests' rows are freed, not kept as prefixes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from nanoseek.engine.cache import SlotPool
from nanoseek.engine.request import Delta, Request
from nanoseek.engine.runner import ModelRunner
from nanoseek.engine.speculative import MTPSpeculator
from nanoseek.errors import EngineError, QueueFullError

log = logging.getLogger("nanoseek.engine")
MIN_CHUNK = 32  # prompt tokens a chunk may widen a prefill batch to, whatever its first chunk's width


@dataclass
class StepRecord:
    """What one step did (the scheduler keeps the last `history` of them; tests and metrics read them)."""

    decoded: list = field(default_factory=list)  # ids of the requests that got tokens from the decode phase
    prefilled: dict = field(default_factory=dict)  # request id -> prompt tokens computed this step
    started: list = field(default_factory=list)  # ids whose first token came this step
    finished: list = field(default_factory=list)


@dataclass
class Counters:
    """Totals since start."""

    steps: int = 0
    requests: int = 0
    finished: int = 0
    aborted: int = 0
    failed: int = 0  # ended by an error in their own step
    prompt_tokens: int = 0  # of admitted requests
    prompt_tokens_computed: int = 0  # prefilled (the rest came from the prefix cache)
    prompt_tokens_cached: int = 0
    generated_tokens: int = 0

    @property
    def prefix_hit_rate(self) -> float:
        return self.prompt_tokens_cached / self.prompt_tokens if self.prompt_tokens else 0.0


class Scheduler:
    def __init__(self, runner: ModelRunner, slots: SlotPool, *, max_batch: int, max_waiting: int,
                 step_tokens: int, idle_prefill_tokens: int, speculator: MTPSpeculator | None = None,
                 history: int = 256):
        self.runner, self.slots, self.spec = runner, slots, speculator
        self.max_batch, self.max_waiting = max_batch, max_waiting
        # tokens one step may spend: step_tokens while requests are decoding (bounds the time between their
        # tokens), idle_prefill_tokens of prompts when none is (nothing waits: prefill in big chunks)
        self.step_tokens, self.idle_prefill_tokens = step_tokens, idle_prefill_tokens
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []
        self.requests: dict = {}  # id -> Request, every request not yet finished
        self.counters = Counters()
        self.records: deque[StepRecord] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._inbox: list[Request] = []
        self._aborts: list = []

    # ---- from any thread -------------------------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        with self._lock:
            if req.id in self.requests or any(r.id == req.id for r in self._inbox):
                raise EngineError(f"request id {req.id!r} is already in use", param="request_id")
            if len(self.waiting) + len(self._inbox) >= self.max_waiting:
                raise QueueFullError(f"the engine's waiting queue is full ({self.max_waiting} requests); retry "
                                     "later")
            self._inbox.append(req)

    def abort(self, rid) -> None:
        """End request rid at the next step and free its cache row; unknown or finished ids are ignored."""
        with self._lock:
            self._aborts.append(rid)

    @property
    def has_work(self) -> bool:
        return bool(self.requests or self._inbox)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self._inbox)

    @property
    def num_running(self) -> int:
        return self.slots.n_decoding + len(self.prefilling)

    # ---- the step ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Delta]:
        with self._lock:
            inbox, aborts = self._inbox, self._aborts
            self._inbox, self._aborts = [], []
        for r in inbox:
            self.requests[r.id] = r
            self.waiting.append(r)
            self.counters.requests += 1
        rec = StepRecord()
        out = [self._abort(rid, rec) for rid in aborts if rid in self.requests]
        out += self._decode(rec)
        out += self._prefill(rec)
        self.counters.steps += 1
        self.records.append(rec)
        return out

    def _decode(self, rec: StepRecord) -> list[Delta]:
        running = [s.owner for s in self.slots.decoding()]
        if not running:
            return []
        spec = self.spec
        t0 = time.perf_counter()
        try:
            speculated = spec is not None and spec.wants_round(running)
            if speculated:
                spec.catch_up(running)
                t0 = time.perf_counter()  # the policy compares rounds and steps, not what a switch costs
                new, logits = spec.round(running)  # a row whose sampling raised holds the exception
            else:
                h, lg = self.runner.decode(running)
                new = [t if isinstance(t, Exception) else [t] for t in _choose(running, lg)]
                logits = [lg[i:i + 1] for i in range(len(running))]
                if spec is not None:
                    spec.after_plain(running, h, new)
        except Exception as e:  # the batch's forward: it fails the requests in it, not the others
            return self._fail_all(running, e, rec)
        if spec is not None:
            spec.observe(running, speculated, time.perf_counter() - t0,
                         sum(len(t) for t in new if not isinstance(t, Exception)))
        out, failed = [], []
        for r, toks, lg in zip(running, new, logits):
            try:
                if isinstance(toks, Exception):
                    raise toks
                out.append(r.emit(toks, lg))
                rec.decoded.append(r.id)
            except Exception as e:
                failed.append((r, e))
        for r, e in failed:  # rows are released (moved) only once every row's tokens are taken
            out.append(self._fail(r, e, rec))
        for r in running:
            if r.finish is not None and r.finish != "error":
                self._finish(r, rec)
        return out

    def _prefill(self, rec: StepRecord) -> list[Delta]:
        k = self.spec.k if self.spec is not None else 0
        n_dec = self.slots.n_decoding
        budget = self.step_tokens - n_dec * (k + 1) if n_dec else self.idle_prefill_tokens
        while self.waiting and self.num_running < self.max_batch:
            r = self.waiting[0]
            # prompt logprobs need every prompt position's logits: no reuse for those requests
            slot = self.slots.acquire(r.prompt, reuse=r.params.prompt_logprobs is None, need_mtp=self.spec is not None,
                                      mtp_optional=self.spec is not None and self.spec.policy is not None)
            if slot is None:
                break
            self.waiting.popleft()
            slot.owner, r.slot, r.computed = r, slot, slot.length
            r.out.cached_tokens = slot.length
            self.counters.prompt_tokens += len(r.prompt)
            self.counters.prompt_tokens_cached += slot.length
            self.prefilling.append(r)
        # prompt chunks in arrival order, run as one right-padded batch whose padded size fits the budget. A
        # later prompt does not widen the batch past the first chunk's width (or MIN_CHUNK): it takes that much
        # now and the rest in later steps, instead of every shorter row computing padding up to its length
        # (at 16 clients, padding was a fifth to a third of the prefill work)
        chunks, width = [], 0
        for r in self.prefilling:
            n = min(len(r.prompt) - r.computed, max(budget, 1))
            if chunks:
                n = min(n, max(width, MIN_CHUNK))
                if (len(chunks) + 1) * max(width, n) > budget:
                    break
            chunks.append((r, r.computed, r.computed + n))
            width = max(width, n)
        if not chunks:
            return []
        try:
            last = self.runner.prefill(chunks, draft=self.spec)
        except Exception as e:
            return self._fail_all([r for r, _, _ in chunks], e, rec)
        out = []
        done = [(r, h) for (r, start, end), h in zip(chunks, last) if h is not None]
        for r, start, end in chunks:
            rec.prefilled[r.id] = end - start
            self.counters.prompt_tokens_computed += end - start
        if done:
            try:
                logits = self.runner.logits(torch.stack([h for _, h in done]))
            except Exception as e:
                return self._fail_all([r for r, _ in done], e, rec)
            firsts = _choose([r for r, _ in done], logits)
            for i, ((r, h), t) in enumerate(zip(done, firsts)):
                try:
                    if isinstance(t, Exception):
                        raise t
                    self.prefilling.remove(r)
                    self.slots.index_prefix(r.slot)
                    self.slots.start_decoding(r.slot)
                    if self.spec is not None:
                        self.spec.start(r, h, t)
                    out.append(r.emit([t], logits[i:i + 1]))
                    rec.started.append(r.id)
                except Exception as e:
                    out.append(self._fail(r, e, rec))
                    continue
                if r.finish is not None:
                    self._finish(r, rec)
        return out

    def _finish(self, r: Request, rec: StepRecord) -> None:
        self.slots.release(r.slot)
        r.slot = None
        del self.requests[r.id]
        self.counters.finished += 1
        self.counters.generated_tokens += len(r.tokens)
        rec.finished.append(r.id)

    def _fail(self, r: Request, error: Exception, rec: StepRecord) -> Delta:
        """End request r because its step raised; its row is freed (its cache may hold half a step)."""
        log.error("request %r failed: %s: %s", r.id, type(error).__name__, error, exc_info=error)
        if r in self.prefilling:
            self.prefilling.remove(r)
        if r.slot is not None:
            self.slots.release(r.slot, keep=False)
            r.slot = None
        del self.requests[r.id]
        self.counters.failed += 1
        self.counters.generated_tokens += len(r.tokens)
        rec.finished.append(r.id)
        return r.fail(error)

    def _fail_all(self, reqs: list[Request], error: Exception, rec: StepRecord) -> list[Delta]:
        return [self._fail(r, error, rec) for r in reqs]

    def _abort(self, rid, rec: StepRecord) -> Delta:
        r = self.requests[rid]
        if r in self.waiting:
            self.waiting.remove(r)
        if r in self.prefilling:
            self.prefilling.remove(r)
        if r.slot is not None:
            self.slots.release(r.slot)
            r.slot = None
        del self.requests[rid]
        self.counters.aborted += 1
        self.counters.generated_tokens += len(r.tokens)
        rec.finished.append(rid)
        return r.abort()


def _choose(reqs: list[Request], logits) -> list[int | Exception]:
    """Each request's next token, or the exception its sampling raised (that request alone fails)."""
    if all(r.params.greedy and not r.params.penalized for r in reqs):
        return logits.argmax(-1).tolist()
    out: list[int | Exception] = []
    for i, r in enumerate(reqs):
        try:
            out.append(r.sampler.sample(logits[i]))
        except Exception as e:
            out.append(e)
    return out
