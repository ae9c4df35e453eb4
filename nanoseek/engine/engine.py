"""The generation engine: batched prefill and decode over a latent cache, sampling, streaming, speculation.

    engine = Engine.load("ckpt")                      # a nanoseek checkpoint or a Hugging Face directory
    out = engine.generate(["Hello", "Hi"], SamplingParams(max_new_tokens=32, temperature=0.7, seed=1))
    for delta in engine.stream("Hello", SamplingParams(stop=["\\n\\n"])):
        print(delta.text, end="")

One call runs a batch: prompts of different lengths are prefilled together (right-padded, in chunks of at
most `prefill_tokens` tokens), then decoded together, one token per request per step, through the absorbed
latent-cache path. A request that finishes leaves the batch at once (its cache row is refilled by the last
active row), so the others never wait for it and never compute for it. With `speculative=k`, each step
drafts k tokens with the model's MTP module and verifies them in one forward (nanoseek.engine.speculative).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from nanoseek.engine.cache import LatentCache
from nanoseek.engine.detokenize import TextStream
from nanoseek.engine.sampling import Sampler, SamplingError, SamplingParams, TokenLogprob, token_logprobs
from nanoseek.engine.speculative import draft_budget, mtp_step, speculative_round, verify_step
from nanoseek.errors import ContextLengthError, EngineError, SamplingError
from nanoseek.model.inference import InferenceModel


@dataclass
class Delta:
    """One streaming increment of request `index`: new text (never a split character, never part of a stop
    string) and the token ids generated since the last increment; the last one carries finish_reason."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (stop token or string) or "length" (max_new_tokens)
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    logprobs: list[TokenLogprob] | None = None  # for token_ids, when SamplingParams.logprobs is set
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first increment only, when asked for


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

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


@dataclass
class RunStats:
    """Figures of the engine's last run (what the CLIs and benchmarks print)."""

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    cache_bytes: int = 0  # allocated latent cache (main model)
    cache_bytes_per_token: int = 0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


class _Seq:
    """One request in flight."""

    def __init__(self, index: int, prompt: list[int], params: SamplingParams, sampler: Sampler,
                 stream: TextStream | None, stop_ids: set[int]):
        self.index, self.prompt, self.params, self.sampler, self.stream = index, prompt, params, sampler, stream
        self.stop_ids = stop_ids
        self.limit = len(prompt) + params.max_new_tokens  # cache positions this request may use
        self.tokens: list[int] = []
        self.finish: str | None = None
        self.stop_reason: str | int | None = None
        self.length = 0  # tokens stored in the main cache
        self.pending = -1  # last generated token, not yet fed to the model
        self.drafted = self.accepted = 0
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        # speculative: MTP positions [mtp_len, length) still to be written, from these hiddens and next ids
        self.mtp_len = 0
        self.h_pend: torch.Tensor | None = None
        self.next_pend: list[int] = []


class Engine:
    def __init__(self, model, tokenizer=None, *, prefill_tokens: int = 8192, compile: bool = False,
                 draft_vocab: int | None = None, eos_token_ids: Sequence[int] | None = None):
        """compile: run the decode step through torch.compile (fewer, fused kernels: about 1.5x faster decoding
        on CPU; the first step of each new batch shape compiles, which takes seconds to a minute).
        draft_vocab: speculative drafts choose among token ids below this (default max(1024, vocab / 8)): the
        draft's output head is a large share of its cost, and the low BPE ids carry most of what drafts get
        right; the output stays exact whatever the draft (nanoseek.engine.speculative).
        eos_token_ids: the ids that end generation unless a request sets ignore_eos (default: config.json's
        eos_token_id; `load` takes generation_config.json's when the checkpoint has one, as HF generate does),
        together with a nanoseek tokenizer's stop ids (<|end|>, <|eos|>)."""
        self.model = model  # the cached path has no dropout or statistics: train/eval mode does not matter
        self.fast = InferenceModel(model)  # cached steps, absorbed decode, packed weights
        self.config = model.config
        self.tokenizer = tokenizer
        self.prefill_tokens = prefill_tokens
        p = model.model.embed_tokens.weight
        self.device, self.dtype = p.device, p.dtype
        # a nanoseek tokenizer's end of turn always stops: a chat model trained on its template ends answers there
        self.eos_ids = set(eos_token_ids if eos_token_ids is not None else self.config.eos_token_ids)
        self.eos_ids |= set(getattr(tokenizer, "stop_ids", ()))
        self.stats = RunStats()
        self.compiled = compile
        V = self.config.vocab_size
        self.draft_vocab = min(V, draft_vocab if draft_vocab else max(1024, V // 8))
        wrap = (lambda f: torch.compile(f, dynamic=True)) if compile else (lambda f: f)
        self._decode_fn, self._verify_fn, self._mtp_fn = wrap(_decode_logits), wrap(verify_step), wrap(mtp_step)

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype | str | None = None,
             device: torch.device | str | None = None, **kwargs) -> "Engine":
        """A checkpoint directory: the model (nanoseek or Hugging Face layout) and its tokenizer.json, if any."""
        from nanoseek.hf import load_model

        path = resolve_checkpoint(path)
        model = load_model(path, dtype=dtype, device=device)
        kwargs.setdefault("eos_token_ids", generation_eos_ids(path))
        return cls(model, load_tokenizer(path), **kwargs)

    # ---- public API ------------------------------------------------------------------------------------
    def generate(self, prompts, params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 speculative: int = 0) -> Completion | list[Completion]:
        """Run prompts to completion. A single prompt (text or token ids) gives a Completion, a list of
        prompts a list of them in order. params: one SamplingParams for all, or one per prompt."""
        single = _is_single(prompts)
        outs: dict[int, Completion] = {}
        for d in self._stream(prompts, params, speculative, outs):
            pass
        res = [outs[i] for i in sorted(outs)]
        return res[0] if single else res

    def stream(self, prompts, params: SamplingParams | Sequence[SamplingParams] | None = None, *,
               speculative: int = 0) -> Iterator[Delta]:
        """Like generate, but yield Deltas as tokens are produced (interleaved across the batch's requests)."""
        return self._stream(prompts, params, speculative, {})

    def encode_chat(self, messages: list[dict]) -> list[int]:
        render = getattr(self.tokenizer, "render_chat", None)
        if render is None:
            raise EngineError("chat needs a nanoseek tokenizer (tokenizer.json with the chat special tokens) next "
                              "to the checkpoint; train one with `nanoseek tokenizer train`")
        return render(messages, add_generation_prompt=True)[0]

    # ---- requests --------------------------------------------------------------------------------------
    def _requests(self, prompts, params, speculative: int) -> list[_Seq]:
        cfg = self.config
        if _is_single(prompts):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise EngineError("no prompts given")
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise EngineError(f"{len(params)} SamplingParams for {len(prompts)} prompts: give one, or one per prompt")
        if speculative < 0:
            raise EngineError(f"speculative must be >= 0 draft tokens, got {speculative}")
        if speculative and not len(self.model.mtp):
            raise EngineError("speculative decoding needs an MTP module, and this model has none "
                              "(num_nextn_predict_layers = 0); run without --speculative")
        seqs = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            p.validate(cfg.vocab_size)
            if isinstance(prompt, str):
                if self.tokenizer is None:
                    raise EngineError("text prompts need a tokenizer (tokenizer.json in the checkpoint); "
                                      "pass token ids")
                ids = self.tokenizer.encode(prompt)
            else:
                ids = [int(t) for t in prompt]
            if not ids:
                raise EngineError(f"prompt {i} is empty: give at least one token")
            if min(ids) < 0 or max(ids) >= cfg.vocab_size:
                raise EngineError(f"prompt {i} has token ids outside the vocabulary (0..{cfg.vocab_size - 1})")
            ctx = cfg.max_position_embeddings
            if len(ids) + p.max_new_tokens > ctx:
                room = ctx - len(ids)
                raise ContextLengthError(
                    f"prompt {i} ({len(ids)} token{'s' if len(ids) != 1 else ''}) + max_new_tokens "
                    f"({p.max_new_tokens}) = "
                    f"{len(ids) + p.max_new_tokens} exceeds the model's context length of {ctx} tokens; "
                    + (f"ask for at most {room} new tokens" if room > 0 else "shorten the prompt"))
            if p.stop and self.tokenizer is None:
                raise EngineError("stop strings need a tokenizer (tokenizer.json in the checkpoint); "
                                  "use stop_token_ids")
            stream = None
            if self.tokenizer is not None:
                stream = TextStream(self.tokenizer, p.stop, p.skip_special_tokens)
            stop_ids = set(p.stop_token_ids) | (set() if p.ignore_eos else self.eos_ids)
            seqs.append(_Seq(i, ids, p, Sampler(p, cfg.vocab_size, ids, self.device), stream, stop_ids))
        return seqs

    # ---- the loop --------------------------------------------------------------------------------------
    def _stream(self, prompts, params, speculative: int, outs: dict[int, Completion]) -> Iterator[Delta]:
        seqs = self._requests(prompts, params, speculative)
        self.fast.refresh()  # the weights may have changed since the last call (an RL trainer's update)
        for s in seqs:
            outs[s.index] = Completion(s.index, s.prompt, logprobs=[] if s.params.logprobs is not None else None)
        model, dev = self.model, self.device
        T = max(s.limit for s in seqs)
        cache = LatentCache(self.config, len(seqs), T, dtype=self.dtype, device=dev)
        dcache = LatentCache(self.config, len(seqs), T, layers=1, dtype=self.dtype, device=dev) if speculative else None
        rope = model.rotary(torch.arange(T, device=dev), self.dtype)
        st = self.stats = RunStats(requests=len(seqs), prompt_tokens=sum(len(s.prompt) for s in seqs),
                                   cache_bytes=cache.nbytes(), cache_bytes_per_token=cache.bytes_per_token())
        t0 = time.perf_counter()
        logits = self._prefill(seqs, cache, dcache, rope)
        st.prefill_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = list(seqs)
        new = [[t] for t in self._choose(rows, logits)]
        per_token_logits = [logits[i:i + 1] for i in range(len(rows))]
        for s, toks in zip(rows, new):
            s.next_pend = toks  # MTP position len(prompt) - 1 pairs the last prompt hidden with this token
        while True:
            for i, s in enumerate(rows):
                delta = self._emit(s, new[i], per_token_logits[i], outs[s.index])
                if delta is not None:
                    yield delta
            st.steps += 1
            self._compact(rows, (cache, dcache))
            if not rows:
                break
            if speculative and max(draft_budget(s, speculative) for s in rows) > 0:
                new, per_token_logits = speculative_round(self, rows, cache, dcache, rope, speculative)
            else:
                logits = self._decode_step(rows, cache, rope)
                new = [[t] for t in self._choose(rows, logits)]
                per_token_logits = [logits[i:i + 1] for i in range(len(rows))]
        st.decode_seconds = time.perf_counter() - t0
        st.generated_tokens = sum(len(c.token_ids) for c in outs.values())
        st.drafted = sum(c.drafted for c in outs.values())
        st.accepted = sum(c.accepted for c in outs.values())

    @torch.inference_mode()
    def _prefill(self, seqs: list[_Seq], cache: LatentCache, dcache: LatentCache | None, rope) -> torch.Tensor:
        """Run every prompt through the model, filling the cache; return the last position's logits [B, V]."""
        fast, dev, budget = self.fast, self.device, self.prefill_tokens
        last = [None] * len(seqs)
        i = 0
        while i < len(seqs):  # groups of rows whose padded size fits the token budget
            j, S = i + 1, len(seqs[i].prompt)
            while j < len(seqs) and (j + 1 - i) * max(S, len(seqs[j].prompt)) <= budget:
                S = max(S, len(seqs[j].prompt))
                j += 1
            group = seqs[i:j]
            nb = len(group)
            ids = torch.zeros(nb, S + 1, dtype=torch.long, device=dev)
            for b, s in enumerate(group):
                ids[b, :len(s.prompt)] = torch.tensor(s.prompt, device=dev)
            lens = torch.tensor([len(s.prompt) for s in group], device=dev)
            views = cache.views(nb, i)
            chunk = max(budget // nb, 1)
            for c0 in range(0, S, chunk):
                c1 = min(S, c0 + chunk)
                pos = torch.arange(c0, c1, device=dev).expand(nb, -1)
                valid = pos < lens[:, None]
                h = fast.forward_cached(ids[:, c0:c1], views, pos, valid=valid, span=c1, rope=rope)
                for b, s in enumerate(group):
                    n = len(s.prompt)
                    if c0 <= n - 1 < c1:
                        last[i + b] = h[b, n - 1 - c0]
                    if s.params.prompt_logprobs is not None and c0 < n - 1:
                        upto = min(c1, n - 1)  # position t predicts prompt token t + 1
                        lp = token_logprobs(fast.logits(h[b, :upto - c0]), ids[b, c0 + 1:upto + 1],
                                            s.params.prompt_logprobs)
                        s.prompt_logprobs = (s.prompt_logprobs or [None]) + lp
                if dcache is not None:  # MTP position t sees (h_t, token t + 1): all but the last prompt position
                    fast.forward_mtp_cached(1, h, ids[:, c0 + 1:c1 + 1], dcache.views(nb, i)[0], pos,
                                             valid=pos < (lens - 1)[:, None], span=c1, rope=rope)
            for b, s in enumerate(group):
                s.length = len(s.prompt)
                if s.params.prompt_logprobs is not None and s.prompt_logprobs is None:
                    s.prompt_logprobs = [None]
                if dcache is not None:
                    s.mtp_len, s.h_pend = s.length - 1, last[i + b].unsqueeze(0)
            i = j
        return fast.logits(torch.stack(last)).float()

    @torch.inference_mode()
    def _decode_step(self, rows: list[_Seq], cache: LatentCache, rope) -> torch.Tensor:
        n, dev = len(rows), self.device
        ids = torch.tensor([[s.pending] for s in rows], device=dev)
        pos = torch.tensor([[s.length] for s in rows], device=dev)
        span = max(s.length for s in rows) + 1
        logits = self._decode_fn(self.fast, ids, cache.views(n), pos, span, rope)
        for s in rows:
            s.length += 1
        return logits.float()

    @torch.inference_mode()
    def _choose(self, rows: list[_Seq], logits: torch.Tensor) -> list[int]:
        if all(s.params.greedy and not s.params.penalized for s in rows):
            return logits.argmax(-1).tolist()
        return [s.sampler.sample(logits[i]) for i, s in enumerate(rows)]

    # ---- output ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _emit(self, s: _Seq, tokens: list[int], logits: torch.Tensor, out: Completion) -> Delta | None:
        """Append newly generated tokens to a request, stopping at the first that finishes it."""
        text, taken = [], []
        for t in tokens:
            taken.append(t)
            s.tokens.append(t)
            s.sampler.observe(t)
            s.pending = t
            if t in s.stop_ids:
                s.finish, s.stop_reason = "stop", t
            elif s.stream is not None:
                text.append(s.stream.push(t))
                if s.stream.stopped is not None:
                    s.finish, s.stop_reason = "stop", s.stream.stopped
            if s.finish is None and len(s.tokens) >= s.params.max_new_tokens:
                s.finish = "length"
            if s.finish is not None:
                if s.stream is not None:
                    text.append(s.stream.flush())
                break
        lps = None
        if s.params.logprobs is not None:
            lps = token_logprobs(logits[:len(taken)], torch.tensor(taken, device=logits.device), s.params.logprobs)
            out.logprobs.extend(lps)
        delta = Delta(s.index, "".join(text), taken, s.finish, s.stop_reason, lps)
        if s.prompt_logprobs is not None and out.prompt_logprobs is None:
            out.prompt_logprobs = delta.prompt_logprobs = s.prompt_logprobs
        out.token_ids.extend(taken)
        out.text += delta.text
        out.finish_reason, out.stop_reason = s.finish, s.stop_reason
        out.drafted, out.accepted = s.drafted, s.accepted
        return delta

    @staticmethod
    @torch.inference_mode()
    def _compact(rows: list[_Seq], caches) -> None:
        """Drop finished requests; the last active row moves into each freed row, keeping rows a prefix."""
        i = 0
        while i < len(rows):
            if rows[i].finish is None:
                i += 1
                continue
            last = len(rows) - 1
            if i != last:
                for c in caches:
                    if c is not None:
                        c.move_row(last, i, rows[last].length)
                rows[i] = rows[last]
            rows.pop()


def _decode_logits(fast: InferenceModel, ids, kv, pos, span: int, rope) -> torch.Tensor:
    """One decode step for every row: logits [n, V] of the token after ids [n, 1]."""
    return fast.logits(fast.forward_cached(ids, kv, pos, span=span, rope=rope)[:, 0])


def _is_single(prompts) -> bool:
    if isinstance(prompts, str):
        return True
    if isinstance(prompts, torch.Tensor):
        return prompts.dim() == 1
    return isinstance(prompts, (list, tuple)) and len(prompts) > 0 and isinstance(prompts[0], int)


class _RawTokenizer:
    """Any tokenizer.json (e.g. an imported Hugging Face checkpoint's) behind the calls the engine makes."""

    def __init__(self, tok):
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def resolve_checkpoint(path: str | Path) -> Path:
    """A model directory as given, or for a training run directory (or its checkpoints/ folder) the checkpoint
    its `checkpoints/latest` pointer names."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for pointer in (path / "checkpoints" / "latest", path / "latest"):
        if pointer.is_file():
            target = pointer.parent / pointer.read_text().strip()
            if (target / "config.json").is_file():
                return target
            raise EngineError(f"{pointer} names {target.name}, which has no config.json; pass a checkpoint "
                              f"directory from {pointer.parent} instead")
    raise EngineError(f"{path}: no config.json there (nor a training run's checkpoints/latest); point to a "
                      "nanoseek or Hugging Face model directory")


def generation_eos_ids(path: str | Path) -> list[int] | None:
    """The stop ids of a checkpoint's generation_config.json (what HF generate and vLLM stop at), or None when
    it has none or names no eos_token_id."""
    file = Path(path) / "generation_config.json"
    if not file.is_file():
        return None
    try:
        eos = json.loads(file.read_text()).get("eos_token_id")
        ids = None if eos is None else [int(eos)] if isinstance(eos, int) else [int(i) for i in eos]
    except (ValueError, TypeError, AttributeError) as e:
        raise EngineError(f"{file} is not a valid generation config ({e}); fix its eos_token_id or delete "
                          "the file (the tokenizer's or config.json's stop ids are used then)") from None
    return ids


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer: a nanoseek Tokenizer (chat template, stop ids) when it has nanoseek's
    special tokens, else the plain tokenizer.json; None when the directory has no tokenizer.json."""
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        return None
    from tokenizers import Tokenizer as HFTokenizer

    from nanoseek.tokenizer import SPECIAL_TOKENS, Tokenizer

    raw = HFTokenizer.from_file(str(file))
    if all(raw.token_to_id(t) is not None for t in SPECIAL_TOKENS):
        return Tokenizer(raw)
    return _RawTokenizer(raw)


__all__ = ["Engine", "EngineError", "Delta", "Completion", "RunStats", "SamplingParams", "SamplingError",
           "ContextLengthError", "load_tokenizer", "resolve_checkpoint"]
