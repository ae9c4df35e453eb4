"""The model runner: the model's steps over the persistent latent cache (prefill chunks, decode), compiled or
eager. It knows rows, positions and tokens; which requests run when is the scheduler's business.

Compiled decode without stalls: with compile=True the decode step goes through torch.compile with dynamic
shapes, and `warmup` runs it at start-up for a batch of 1 and one of 2: torch.compile specializes a size of 1
and shares one graph among all the others, so those two graphs serve every batch size and context length
and nothing compiles while requests are served. A warm-up row feeds token 0 at the scratch position of a
row (position max_len, never attended to), so it changes nothing. The compiled kernels stay in torch's
on-disk cache (nanoseek.engine.compile_cache): a second start compiles from it in seconds.
"""

from __future__ import annotations

import time

import torch

from nanoseek.engine.cache import LatentPool
from nanoseek.engine.sampling import token_logprobs
from nanoseek.model.inference import InferenceModel


def decode_step(fast: InferenceModel, ids, kv, pos, span: int, rope) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step for batch rows 0..n-1 of the cache: the final hidden [n, d] at ids [n, 1] (what an MTP
    draft module reads) and the logits [n, V] of the token after them."""
    h = fast.forward_cached(ids, kv, pos, span=span, rope=rope)[:, 0]
    return h, fast.logits(h)


def compiled(fn):
    """fn through torch.compile with dynamic shapes, as the engine's steps need it: every size may vary but the
    weights' (InferenceModel marks them static). Trace it under `tracing()`."""
    return torch.compile(fn, dynamic=True)


def tracing():
    """The setting the engine's compiled steps are traced under (at start-up): Python floats (norm epsilons,
    attention scales) stay constants. Left symbolic, they made dynamo trace the first graph twice on every
    start. Only tracing reads it (the steps run without it: entering it costs ~30 us)."""
    return torch._dynamo.config.patch(specialize_float=True)


def warm_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a compiled start runs: 1, and 2 for every larger one (the graph all sizes >= 2 share)."""
    return tuple(b for b in (1, 2) if b <= max_batch)


class ModelRunner:
    def __init__(self, model, *, rows: int, max_len: int, compile: bool = False, draft_layers: int = 0,
                 max_batch: int | None = None):
        self.model = model
        self.config = model.config
        self.fast = InferenceModel(model)
        p = model.model.embed_tokens.weight
        self.device, self.dtype = p.device, p.dtype
        self.max_len = max_len
        self.pool = LatentPool(self.config, rows, max_len, dtype=self.dtype, device=self.device)
        self.draft_pool = (LatentPool(self.config, rows, max_len, layers=draft_layers, dtype=self.dtype,
                                      device=self.device) if draft_layers else None)
        # rope tables over every position, the scratch position included
        self.rope = model.rotary(torch.arange(max_len + 1, device=self.device), self.dtype)
        self.compiled = compile
        self.warm_sizes = warm_sizes(min(rows, max_batch or rows)) if compile else ()
        self._decode = compiled(decode_step) if compile else decode_step
        self.startup_seconds = 0.0
        # what the steps did, since start (the engine's statistics are differences of these)
        self.prefill_tokens = self.decode_tokens = 0
        self.prefill_seconds = self.decode_seconds = 0.0

    def refresh(self, force: bool = False) -> bool:
        """Derived weights follow the model's parameters (cheap when they did not change). Returns whether
        the weights changed (then every cached latent was computed by other weights)."""
        return self.fast.refresh(force)

    @torch.inference_mode()
    def warmup(self) -> float:
        """Compile the decode step now (a batch of 1 and one of 2), so that serving never waits for a compile."""
        t0 = time.perf_counter()
        self.refresh()
        for b in self.warm_sizes:
            ids = torch.zeros(b, 1, dtype=torch.long, device=self.device)
            pos = torch.full((b, 1), self.max_len, dtype=torch.long, device=self.device)  # scratch: stores nothing
            self._decode(self.fast, ids, self.pool.layers, pos, 2, self.rope)  # span 2: the smallest real one
        self.startup_seconds = time.perf_counter() - t0
        return self.startup_seconds

    # ---- steps -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, chunks: list[tuple], draft=None) -> list[torch.Tensor | None]:
        """Run prompt chunks [(request, start, end)] of different requests in one forward (right-padded),
        writing their cache rows. Returns, per chunk, the last prompt position's final hidden [d] when the
        chunk ends the prompt, else None. Fills request.prompt_logprobs when asked for. draft: the
        speculative strategy, which writes its own cache from the same hiddens."""
        t0 = time.perf_counter()
        dev, nb = self.device, len(chunks)
        S = max(end - start for _, start, end in chunks)
        ids = torch.zeros(nb, S + 1, dtype=torch.long, device=dev)  # + the token after the chunk (draft input)
        starts = torch.tensor([start for _, start, _ in chunks], device=dev)
        ends = torch.tensor([end for _, _, end in chunks], device=dev)
        for b, (r, start, end) in enumerate(chunks):
            piece = r.prompt[start:end + 1]
            ids[b, :len(piece)] = torch.tensor(piece, device=dev)
        pos = starts[:, None] + torch.arange(S, device=dev)
        valid = pos < ends[:, None]
        pos = pos.clamp(max=self.max_len)  # padding (valid False) is computed, never stored
        rows = torch.tensor([r.slot.row for r, _, _ in chunks], device=dev)
        span = max(end for _, _, end in chunks)
        h = self.fast.forward_cached(ids[:, :S], self.pool.layers, pos, valid=valid, span=span, rope=self.rope,
                                     rows=rows)
        last: list[torch.Tensor | None] = []
        for b, (r, start, end) in enumerate(chunks):
            n = len(r.prompt)
            if r.params.prompt_logprobs is not None and start < n - 1:
                upto = min(end, n - 1)  # position t predicts prompt token t + 1
                lp = token_logprobs(self.fast.logits(h[b, :upto - start]), ids[b, 1:upto - start + 1],
                                    r.params.prompt_logprobs)
                r.prompt_logprobs = (r.prompt_logprobs or [None]) + lp
            elif r.params.prompt_logprobs is not None and r.prompt_logprobs is None:
                r.prompt_logprobs = [None]
            r.slot.tokens.extend(r.prompt[start:end])
            r.slot.length = end
            r.computed = end
            last.append(h[b, end - start - 1] if end == n else None)
        if draft is not None:
            # draft position t sees (h_t, token t + 1): every chunk position except a prompt's last
            n_prompt = torch.tensor([len(r.prompt) for r, _, _ in chunks], device=dev)
            draft.prefill(h, ids[:, 1:], pos, valid & (pos < (n_prompt - 1)[:, None]), span, rows)
            for r, start, end in chunks:
                if r.slot.mtp_len >= start:  # else the draft cache lacks part of a reused prefix: it stays short
                    r.slot.mtp_len = min(end, len(r.prompt) - 1)
        self.prefill_tokens += int(sum(end - start for _, start, end in chunks))
        self.prefill_seconds += time.perf_counter() - t0
        return last

    @torch.inference_mode()
    def decode(self, reqs: list) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for each decoding request (rows 0..n-1 of the cache): their pending tokens go in, their
        final hiddens ([n, d]) and the logits of what follows ([n, V], fp32) come out."""
        t0 = time.perf_counter()
        n, dev = len(reqs), self.device
        ids = torch.tensor([[r.pending] for r in reqs], device=dev)
        pos = torch.tensor([[r.slot.length] for r in reqs], device=dev)
        span = max(r.slot.length for r in reqs) + 1
        h, logits = self._decode(self.fast, ids, self.pool.layers, pos, span, self.rope)
        logits = logits.float()
        for r in reqs:
            r.slot.tokens.append(r.pending)
            r.slot.length += 1
        self.decode_tokens += n
        self.decode_seconds += time.perf_counter() - t0
        return h, logits

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fast.logits(h).float()
