"""The generation engine: one scheduler over one persistent latent cache, and its two ways in.

    engine = Engine.load("ckpt")                      # a nanoseek checkpoint or a Hugging Face directory
    out = engine.generate(["Hello", "Hi"], SamplingParams(max_new_tokens=32, temperature=0.7, seed=1))
    for delta in engine.stream("Hello", SamplingParams(stop=["\\n\\n"])):
        print(delta.text, end="")

    rid = engine.add_request("Hello", params)         # a server: requests come and go ...
    deltas = engine.step()                            # ... while its loop steps the engine

`generate` and `stream` are thin wrappers that add their prompts as requests and step until they are done:
there is one generation path (nanoseek.engine.scheduler). Requests of different lengths run together,
join between steps and leave as soon as they finish; conversations reuse their cached prefix. With
`speculative=k` each decode step drafts k tokens with the model's MTP module and verifies them in one
forward (nanoseek.engine.speculative); `speculative="auto"` drafts one where the model has an MTP module
and only while that measures faster than plain decoding; with `compile=True` decode steps run compiled,
compiled at start-up and kept in an on-disk cache (nanoseek.engine.runner, nanoseek.engine.compile_cache).
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from nanoseek.engine import compile_cache
from nanoseek.engine.cache import LatentPool, SlotPool
from nanoseek.engine.detokenize import TextStream
from nanoseek.engine.loading import generation_eos_ids, load_tokenizer, resolve_checkpoint
from nanoseek.engine.request import Completion, Delta, Request
from nanoseek.engine.runner import ModelRunner, tracing, warm_sizes
from nanoseek.engine.sampling import Sampler, SamplingParams
from nanoseek.engine.scheduler import Scheduler
from nanoseek.engine.speculative import MTPSpeculator
from nanoseek.errors import ContextLengthError, EngineError
from nanoseek.hf import load_model

log = logging.getLogger("nanoseek.engine")

DEFAULT_CACHE_MEMORY = 256 * 2**20  # bytes of latent cache allocated at start, unless told otherwise


@dataclass
class RunStats:
    """Figures of the engine's last generate/stream call (what the CLIs and benchmarks print)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, taken from the prefix cache
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    cache_bytes: int = 0  # the latent cache pool (main model)
    cache_bytes_per_token: int = 0

    @property
    def prefill_tokens_per_second(self) -> float:
        return (self.prompt_tokens - self.cached_tokens) / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    def __add__(self, other: RunStats) -> RunStats:
        """Two calls' figures together (the counts and times summed; the cache sizes are the later call's)."""
        summed = {f: getattr(self, f) + getattr(other, f) for f in ("requests", "prompt_tokens", "cached_tokens",
                  "generated_tokens", "prefill_seconds", "decode_seconds", "steps", "drafted", "accepted")}
        return RunStats(**summed, cache_bytes=other.cache_bytes, cache_bytes_per_token=other.cache_bytes_per_token)


def auto_draft_tokens(config, dtype: torch.dtype) -> int:
    """Draft tokens of speculative="auto": one where the model has an MTP module and runs in fp32 (in bf16 a
    verifying forward's argmax can differ from plain decoding's, so the output would depend on the timing)."""
    return 1 if config.num_nextn_predict_layers and dtype == torch.float32 else 0


class GenerationFailed(RuntimeError):
    """A request of a generate/stream call failed inside the engine (not an input error: the log has why)."""


class Engine:
    def __init__(self, model, tokenizer=None, *, compile: bool = False, speculative: int | str = 0,
                 draft_vocab: int | None = None, eos_token_ids: Sequence[int] | None = None, max_batch: int = 32,
                 max_len: int | None = None, cache_memory: int | None = None, max_waiting: int = 1024,
                 step_tokens: int = 512, prefill_tokens: int = 8192, prefix_caching: bool = True):
        """model: a DeepSeekV3 (any device and dtype; its live weights are used, no copy).
        compile: decode steps through torch.compile, compiled here, at start (`startup_seconds` says how long
        that took), into torch's on-disk cache (nanoseek.engine.compile_cache): the next start of the same
        model is quick (`Engine.compile_is_warm` says so beforehand).
        speculative: k > 0 drafts k tokens per step with the model's MTP module; "auto": one, where the model
        has an MTP module and runs in fp32, in the decode steps where speculating measures faster than not
        (greedy requests only; `speculation_speedup` says what it measured).
        draft_vocab: drafts choose among token ids below this (default max(1024, vocab / 8)): the draft's
        output head is a large share of its cost, and the low BPE ids carry most of what drafts get right;
        the output stays exact whatever the draft.
        eos_token_ids: ids that end generation unless a request sets ignore_eos (default: config.json's;
        `load` takes generation_config.json's), together with a nanoseek tokenizer's <|end|> and <|eos|>.
        max_batch: requests running at once. max_len: the longest prompt + answer (default: the model's
        context, at most 8,192). cache_memory: bytes of latent cache allocated at start (default 256 MiB):
        rows of max_len positions, at least max_batch of them if they fit, the rest for cached prefixes.
        max_waiting: the waiting queue's bound. step_tokens: tokens one step may spend while requests are
        decoding (a longer prompt is prefilled in chunks); prefill_tokens: the same when none is.
        prefix_caching: reuse cached prompt prefixes across requests and conversation turns."""
        cfg = model.config
        self.model, self.config, self.tokenizer = model, cfg, tokenizer
        auto = speculative == "auto"
        if auto:
            speculative = auto_draft_tokens(cfg, model.model.embed_tokens.weight.dtype)
        elif isinstance(speculative, bool) or not isinstance(speculative, int) or speculative < 0:
            raise EngineError(f"speculative must be a number of draft tokens >= 0, or 'auto'; got {speculative!r}",
                              param="speculative")
        if speculative and not len(model.mtp):
            raise EngineError("speculative decoding needs an MTP module, and this model has none "
                              "(num_nextn_predict_layers = 0); run without --speculative", param="speculative")
        p = model.model.embed_tokens.weight
        self.device, self.dtype = p.device, p.dtype
        self.max_len = min(cfg.max_position_embeddings, 8192) if max_len is None else int(max_len)
        if not 1 <= self.max_len <= cfg.max_position_embeddings:
            raise ContextLengthError(f"max_len {self.max_len} must be in 1..{cfg.max_position_embeddings} (the "
                                     "model's context)", param="max_len")
        budget = DEFAULT_CACHE_MEMORY if cache_memory is None else int(cache_memory)
        row = LatentPool.row_bytes(cfg, self.max_len, self.dtype) + (
            LatentPool.row_bytes(cfg, self.max_len, self.dtype, layers=1) if speculative else 0)
        rows = min(budget // row, 4 * max_batch)
        if rows < 1:
            raise EngineError(f"cache_memory of {budget:,} bytes holds no row of {self.max_len} positions "
                              f"({row:,} bytes); give more memory or a smaller max_len", param="cache_memory")
        self.eos_ids = set(eos_token_ids if eos_token_ids is not None else cfg.eos_token_ids)
        self.eos_ids |= set(getattr(tokenizer, "stop_ids", ()))
        V = cfg.vocab_size
        self.draft_vocab = min(V, draft_vocab if draft_vocab else max(1024, V // 8))
        self.speculative = speculative
        self.runner = ModelRunner(model, rows=rows, max_len=self.max_len, compile=compile,
                                  draft_layers=1 if speculative else 0, max_batch=max_batch)
        self.slots = SlotPool([self.runner.pool] + ([self.runner.draft_pool] if speculative else []),
                              prefix_caching=prefix_caching)
        spec = MTPSpeculator(self.runner, speculative, self.draft_vocab, auto=auto) if speculative else None
        self.scheduler = Scheduler(self.runner, self.slots, max_batch=min(max_batch, rows), max_waiting=max_waiting,
                                   step_tokens=step_tokens, idle_prefill_tokens=prefill_tokens, speculator=spec)
        self.compiled = compile
        self.startup_seconds = 0.0
        if compile:
            folder = compile_cache.compile_dir()  # before the first compile reads it
            t0 = time.perf_counter()
            try:
                self._warmup(spec)
            except Exception as e:  # e.g. a damaged kernel file in the on-disk cache: compile afresh, once
                if compile_cache.clear() is None:
                    raise EngineError(f"compiling the decode steps failed ({type(e).__name__}: {str(e)[:300]}); "
                                      f"if the compile cache {folder} is damaged, delete it, or run eager "
                                      "(compile=False, --eager)") from e
                log.warning("compiling the decode steps failed (%s: %.300s); cleared the compile cache %s and "
                            "compiling again", type(e).__name__, e, folder)
                self._warmup(spec)
            self.startup_seconds = time.perf_counter() - t0
            compile_cache.mark_warm(compile_cache.warm_key(cfg, self.dtype, self.device, speculative),
                                    self.runner.warm_sizes, self.startup_seconds)
        self.stats = RunStats()
        self._ids = itertools.count()

    def _warmup(self, spec: MTPSpeculator | None) -> None:
        with tracing():
            self.runner.warmup()
            if spec is not None:
                spec.warmup()

    @functools.cached_property
    def max_prompt_chars(self) -> int | None:
        """Characters past which a text prompt cannot fit in max_len tokens, whatever it says: a nanoseek
        tokenizer (byte-level BPE, no normalizer, special-token text read as plain text) turns every character
        into at least one byte and no token covers more bytes than its longest. None for other tokenizers, whose
        normalizers and pre-tokenizers may drop text."""
        token_bytes = getattr(self.tokenizer, "token_bytes", None)
        if token_bytes is None:
            return None
        return self.max_len * max(int(token_bytes().max()), 1)

    def check_prompt_chars(self, chars: int, param: str = "prompt") -> None:
        """Refuse a text prompt of `chars` characters that cannot fit the context, before tokenizing it (a
        2 MB prompt takes seconds to tokenize only to be refused for its length)."""
        limit = self.max_prompt_chars
        if limit is not None and chars > limit:
            per = limit // self.max_len
            raise ContextLengthError(
                f"the prompt has {chars:,} characters: at least {-(-chars // per):,} tokens (no token of this "
                f"tokenizer covers more than {per} characters), more than the context of {self.max_len:,} tokens; "
                "shorten the prompt", param=param)

    @property
    def speculation_speedup(self) -> float | None:
        """With speculative="auto": speculative over plain decode speed at batch 1 as measured so far (None
        before both modes were measured, or without auto speculation)."""
        spec = self.scheduler.spec
        return spec.policy.speedup() if spec is not None and spec.policy is not None else None

    @property
    def fast(self):
        """The model's generation fast path (nanoseek.model.inference.InferenceModel)."""
        return self.runner.fast

    @staticmethod
    def compile_is_warm(config, dtype: torch.dtype, device: torch.device | str, *, speculative: int | str = 0,
                        max_batch: int = 32) -> bool:
        """Whether Engine(compile=True) of this model would find its compiled steps in the on-disk cache (a
        start of seconds rather than a minute or more)."""
        k = auto_draft_tokens(config, dtype) if speculative == "auto" else speculative
        return compile_cache.is_warm(compile_cache.warm_key(config, dtype, device, k), warm_sizes(max_batch))

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype | str | None = None,
             device: torch.device | str | None = None, **kwargs) -> "Engine":
        """A checkpoint directory (or a training run's, for its latest checkpoint): the model (nanoseek or
        Hugging Face layout) and its tokenizer.json, if any. compile="auto" compiles when the on-disk compile
        cache already holds this model's steps (a start of seconds), else runs eager."""
        path = resolve_checkpoint(path)
        model = load_model(path, dtype=dtype, device=device)
        kwargs.setdefault("eos_token_ids", generation_eos_ids(path))
        if kwargs.get("compile") == "auto":  # compiled when that is quick: the compile cache holds this model
            p = model.model.embed_tokens.weight
            kwargs["compile"] = cls.compile_is_warm(model.config, p.dtype, p.device, speculative=kwargs.get(
                "speculative", 0), max_batch=kwargs.get("max_batch", 32))
        return cls(model, load_tokenizer(path), **kwargs)

    # ---- requests from any thread -------------------------------------------------------------------------
    def make_request(self, prompt, params: SamplingParams | None = None, request_id=None) -> Request:
        """Validate a prompt (text or token ids) and its parameters into a Request; raises the errors of
        nanoseek.errors (EngineError, ContextLengthError, SamplingError) naming what is wrong."""
        cfg = self.config
        p = (params or SamplingParams()).validate(cfg.vocab_size)
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise EngineError("text prompts need a tokenizer (tokenizer.json in the checkpoint); pass token ids",
                                  param="prompt")
            self.check_prompt_chars(len(prompt))
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise EngineError("the prompt is empty: give at least one token", param="prompt")
        if min(ids) < 0 or max(ids) >= cfg.vocab_size:
            raise EngineError(f"the prompt has token ids outside the vocabulary (0..{cfg.vocab_size - 1})",
                              param="prompt")
        if len(ids) + p.max_new_tokens > self.max_len:
            room = self.max_len - len(ids)
            limit = ("the model's context length" if self.max_len == cfg.max_position_embeddings
                     else "the engine's max_len")
            raise ContextLengthError(
                f"the prompt ({len(ids)} token{'s' if len(ids) != 1 else ''}) + max_new_tokens ({p.max_new_tokens})"
                f" = {len(ids) + p.max_new_tokens} exceeds {limit} of {self.max_len} tokens; "
                + (f"ask for at most {room} new tokens" if room > 0 else "shorten the prompt"), param="max_new_tokens")
        if p.stop and self.tokenizer is None:
            raise EngineError("stop strings need a tokenizer (tokenizer.json in the checkpoint); use stop_token_ids",
                              param="stop")
        stream = TextStream(self.tokenizer, p.stop, p.skip_special_tokens) if self.tokenizer is not None else None
        stop_ids = set(p.stop_token_ids) | (set() if p.ignore_eos else self.eos_ids)
        rid = next(self._ids) if request_id is None else request_id
        return Request(rid, ids, p, Sampler(p, cfg.vocab_size, ids, self.device), stream, stop_ids)

    def add_request(self, prompt, params: SamplingParams | None = None, request_id=None):
        """Queue a request (thread-safe); it joins at the next step. Returns its id. Raises QueueFullError when
        the waiting queue is full, and the validation errors of make_request."""
        req = prompt if isinstance(prompt, Request) else self.make_request(prompt, params, request_id)
        self.scheduler.add_request(req)
        return req.id

    def abort(self, request_id) -> None:
        """End a request at the next step and free its cache row (thread-safe; unknown ids are ignored)."""
        self.scheduler.abort(request_id)

    def step(self) -> list[Delta]:
        """One scheduler step: every running request advances, waiting ones are admitted and prefilled."""
        return self.scheduler.step()

    def refresh(self, force: bool = False) -> None:
        """Follow the model's weights after they changed in place (an optimizer step): the generation path's
        derived weights are rebuilt if any parameter changed, and cached prefixes are dropped (other weights
        computed them). generate and stream call it themselves; a loop that steps the engine and also trains
        the model calls it after each update. force: rebuild even if no parameter's version counter moved
        (weights written by a kernel that does not bump them, such as fused AdamW outside nanoseek's loop)."""
        if self.runner.refresh(force):
            self.slots.drop_cached()

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    # ---- the wrappers ---------------------------------------------------------------------------------
    def generate(self, prompts, params: SamplingParams | Sequence[SamplingParams] | None = None
                 ) -> Completion | list[Completion]:
        """Run prompts to completion. A single prompt (text or token ids) gives a Completion, a list of
        prompts a list of them in order. params: one SamplingParams for all, or one per prompt."""
        single = _is_single(prompts)
        reqs = self._requests(prompts, params)
        for _ in self._run(reqs):
            pass
        outs = [r.out for r in reqs]
        return outs[0] if single else outs

    def stream(self, prompts, params: SamplingParams | Sequence[SamplingParams] | None = None) -> Iterator[Delta]:
        """Like generate, but yield Deltas as tokens are produced (interleaved across the prompts; each Delta's
        index is its prompt's position in the call)."""
        return self._run(self._requests(prompts, params))

    def encode_chat(self, messages: list[dict]) -> list[int]:
        render = getattr(self.tokenizer, "render_chat", None)
        if render is None:
            raise EngineError("chat needs a nanoseek tokenizer (tokenizer.json with the chat special tokens) next "
                              "to the checkpoint; train one with `nanoseek tokenizer train`")
        self.check_prompt_chars(sum(len(m.get("content") or "") for m in messages if isinstance(m, dict)
                                    and isinstance(m.get("content"), str)), param="messages")
        return render(messages, add_generation_prompt=True)[0]

    def _requests(self, prompts, params) -> list[Request]:
        if _is_single(prompts):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise EngineError("no prompts given", param="prompt")
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise EngineError(f"{len(params)} SamplingParams for {len(prompts)} prompts: give one, or one per prompt")
        reqs = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            try:
                r = self.make_request(prompt, p)
            except EngineError as e:
                e.message = f"prompt {i}: {e.message}"
                raise
            r.out.index = i
            reqs.append(r)
        return reqs

    def _run(self, reqs: list[Request]) -> Iterator[Delta]:
        """Feed requests to the scheduler (as the waiting queue has room) and step until all are done."""
        r0 = self.runner
        self.refresh()  # the weights may have changed since the last call (an RL trainer's update)
        before = (r0.prefill_seconds, r0.decode_seconds, self.scheduler.counters.steps)
        index = {r.id: r.out.index for r in reqs}
        todo = list(reversed(reqs))
        live = len(reqs)
        try:
            while live:
                while todo and self.scheduler.num_waiting < self.scheduler.max_waiting:
                    self.scheduler.add_request(todo.pop())
                for d in self.scheduler.step():
                    if d.index in index:
                        d.index = index[d.index]
                        if d.finish_reason == "error":  # never a silently short answer
                            raise GenerationFailed(f"prompt {d.index}: generation failed ({d.error})")
                        if d.finish_reason is not None:
                            live -= 1
                        yield d
        finally:  # a consumer that stops early (Ctrl-C in chat) aborts what is left
            for r in reqs:
                if r.finish is None:
                    self.scheduler.abort(r.id)
            if any(r.finish is None for r in reqs):
                self.scheduler.step()
            self.stats = RunStats(
                requests=len(reqs), prompt_tokens=sum(len(r.prompt) for r in reqs),
                cached_tokens=sum(r.out.cached_tokens for r in reqs),
                generated_tokens=sum(len(r.tokens) for r in reqs),
                prefill_seconds=r0.prefill_seconds - before[0], decode_seconds=r0.decode_seconds - before[1],
                steps=self.scheduler.counters.steps - before[2], drafted=sum(r.out.drafted for r in reqs),
                accepted=sum(r.out.accepted for r in reqs), cache_bytes=r0.pool.nbytes(),
                cache_bytes_per_token=r0.pool.bytes_per_token())


def _is_single(prompts) -> bool:
    if isinstance(prompts, str):
        return True
    if isinstance(prompts, torch.Tensor):
        return prompts.dim() == 1
    return isinstance(prompts, (list, tuple)) and len(prompts) > 0 and isinstance(prompts[0], int)


__all__ = ["Engine", "GenerationFailed", "Delta", "Completion", "RunStats", "SamplingParams", "load_tokenizer",
           "resolve_checkpoint"]
