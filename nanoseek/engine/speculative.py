"""Speculative decoding with the model's own MTP module as the draft (docs/architecture.md §5.4).

Each round the MTP module drafts k tokens from the main model's last hidden state, the main model scores the
pending token and all drafts in one forward, and the standard rule (Leviathan et al. 2023; Chen et al. 2023)
decides how many drafts stand: draft d_j is kept with probability min(1, p_j(d_j) / q_j(d_j)); the first
rejected one is replaced by a draw from norm(max(p_j - q_j, 0)); if all stand, one more token comes from
p_k. The output then has exactly the target distribution p; for greedy requests p and q are one-hot and the
rule keeps a draft iff it is the target's argmax, so the output is the plain greedy output token for token.

With `auto=True` the speculator speculates only where it pays (`SpeculationPolicy`): at batch 1 it measures
the seconds per generated token of each mode and runs the faster, trying the other one now and then. A plain
step keeps the draft cache's inputs (the main model's hiddens and the tokens after them) so that a later round
catches up in one MTP forward. Auto mode speculates for greedy requests only (sampled ones decode plainly), so
a seeded sampled answer never depends on the timing.

Drafts beyond the first reuse MTP module 1 on its own normed output (what serving engines do, docs/architecture.md §5.4):
an approximation that only affects how many drafts are accepted, never what is output.
"""

from __future__ import annotations

import statistics
import time
from collections import deque

import torch

from nanoseek.engine.runner import compiled
from nanoseek.engine.sampling import Sampler


def verify(sampler: Sampler, target_logits: torch.Tensor, drafts: list[int],
           draft_probs: list[torch.Tensor]) -> list[int]:
    """Tokens that stand after one round for one request: the accepted prefix of `drafts`, then one token
    drawn from the target (the correction for the first rejected draft, or the bonus after the last).

    target_logits [len(drafts) + 1, V]: the main model's raw logits at the pending token and at each draft.
    draft_probs: the distributions q_j the drafts were drawn from (Sampler.probs of the draft logits, with
    the same penalties history). The sampler's penalty state is left as it was found.
    """
    snap = sampler.snapshot() if sampler.params.penalized else None
    out: list[int] = []
    try:
        for j, d in enumerate(drafts):
            p = sampler.probs(target_logits[j])
            if sampler.params.greedy:
                ok = bool(p[d] == 1.0)
            else:
                q_d = float(draft_probs[j][d])
                ok = q_d > 0 and sampler.uniform() < min(1.0, float(p[d]) / q_d)
            if ok:
                out.append(d)
                sampler.observe(d)
                continue
            residual = (p - draft_probs[j]).clamp_min(0.0) if not sampler.params.greedy else p
            total = float(residual.sum())
            out.append(sampler.draw(residual / total if total > 0 else p))
            return out
        out.append(sampler.draw(sampler.probs(target_logits[len(drafts)])))
        return out
    finally:
        if snap is not None:
            sampler.restore(snap)


def draft_budget(s, k: int) -> int:
    """Drafts worth proposing for request s this round: a round yields up to drafts + 1 tokens, and every
    verified position must stay inside the request's limit (prompt + max_new_tokens)."""
    return max(min(k, s.params.max_new_tokens - len(s.tokens) - 1), 0)


def _owed_hidden(s) -> torch.Tensor:
    """The main-model hiddens request s owes the draft cache, [c, d] (plain steps leave them as pieces)."""
    if len(s.h_pend) > 1:
        s.h_pend = [torch.cat(s.h_pend)]
    return s.h_pend[0]


def verify_step(fast, ids, kv, pos, span: int, rope) -> tuple[torch.Tensor, torch.Tensor]:
    """The verifying forward: hidden states and logits at every position of ids [n, k + 1] (compilable)."""
    h = fast.forward_cached(ids, kv, pos, span=span, rope=rope)
    return h, fast.logits(h)


def mtp_step(fast, h_prev, ids, kv, pos, span: int, rope) -> torch.Tensor:
    """MTP module 1 over its cache without padding: normed hidden [n, S, d] (compilable)."""
    return fast.forward_mtp_cached(1, h_prev, ids, kv, pos, span=span, rope=rope)


class SpeculationPolicy:
    """Speculative round or plain step at batch 1, by measurement: the median seconds per generated token of
    each mode over its last `window` measured steps; the faster one runs, and now and then the other one, so
    that a change (acceptance falling, a longer context) is seen.

    Modes are measured in runs of `block` steps, and the first `settle` steps after a switch are not counted:
    steps that alternate modes, or follow a switch, run with caches the other mode left cold and measured
    speculation up to 1.2x faster than it was. Start: speculative, plain, plain, speculative blocks (so that
    both are measured at the same average position in the requests: a step's cost grows with the context).
    Later the losing mode runs one block after `explore` steps, then after twice as many each time it loses
    again (up to `explore_max`), and after `explore` again once the choice flips.

    Speculation must measure `margin` times faster to be chosen: timed inside the engine's step, rounds came
    out 5-10% better against plain steps than the same modes measured end to end (benchmarks/
    bench_generate.py --only-speculative: a 2-layer model measured 1.00x here and decoded 0.90x, a 4-layer one
    1.07x and 0.95x, a 12-layer one 1.24-1.51x and 1.12-1.26x); the margin keeps the wrong side of that gap plain."""

    def __init__(self, explore: int = 32, explore_max: int = 512, block: int = 8, settle: int = 2,
                 window: int = 24, margin: float = 1.1):
        self.explore, self.explore_max, self.block, self.settle = explore, explore_max, block, settle
        self.margin = margin
        self.times = {True: deque(maxlen=window), False: deque(maxlen=window)}  # speculated -> s / token
        self.queue = deque([True] * block + [False] * 2 * block + [True] * block)  # modes decided already
        self.best: bool | None = None
        self.interval, self.since = explore, 0
        self.last: bool | None = None
        self.run = 0  # steps of the last mode in a row

    def choose(self) -> bool:
        """Whether the next step speculates."""
        if self.queue:
            return self.queue.popleft()
        if self.best is None or self.since % 8 == 0:  # the medians move slowly: every 8th step is enough
            best = statistics.median(self.times[True]) * self.margin <= statistics.median(self.times[False])
            if best != self.best:  # a new choice: look at the other mode again soon
                self.best, self.interval, self.since = best, self.explore, 0
        self.since += 1
        if self.since < self.interval:
            return self.best
        self.since, self.interval = 0, min(2 * self.interval, self.explore_max)
        self.queue.extend([not self.best] * self.block)
        return self.queue.popleft()

    def record(self, speculated: bool, seconds: float, tokens: int) -> None:
        self.run = self.run + 1 if self.last == speculated else 1
        self.last = speculated
        if tokens > 0 and self.run > self.settle:
            self.times[speculated].append(seconds / tokens)

    def speedup(self) -> float | None:
        """Measured speculative speed over plain (None before both modes were measured)."""
        if not (self.times[True] and self.times[False]):
            return None
        return statistics.median(self.times[False]) / statistics.median(self.times[True])


MAX_PENDING = 64  # draft-cache positions a request may owe before it gives up speculating (its hiddens' memory)


class MTPSpeculator:
    """Speculative decoding as the runner's decode strategy: k drafts per round from MTP module 1 over its
    own latent cache (the runner's draft pool, same rows as the main cache), verified in one forward.

    The engine calls `prefill` with every prompt chunk's hiddens (to fill the draft cache), `start` when a
    request's prompt is in (its first draft position pairs the last prompt hidden with the first token),
    and `round` instead of a plain decode step."""

    def __init__(self, runner, k: int, draft_vocab: int, auto: bool = False):
        self.runner, self.k, self.draft_vocab = runner, k, draft_vocab
        self.policy = SpeculationPolicy() if auto else None
        # compiled rounds for a batch of 1 only (where speculation pays most on a CPU): the other sizes would
        # triple the graphs a start compiles, so their rounds run eager
        wrap = compiled if runner.compiled else (lambda f: f)
        self._compiled = (wrap(verify_step), wrap(mtp_step))

    def wants_round(self, rows: list) -> bool:
        """Whether this decode step is a speculative round (else a plain step, then `after_plain`)."""
        if max(draft_budget(s, self.k) for s in rows) == 0 or any(s.h_pend is None for s in rows):
            return False
        if self.policy is None:
            return True
        # auto: a batch of one only. Verifying k + 1 tokens of every row multiplies the experts each step reads
        # (and rounds of larger batches run eager), so on a CPU speculation pays, where it does, at batch 1;
        # exploring it at every batch size would cost each size's warm-up steps for nothing
        return len(rows) == 1 and self.policy.choose()

    def observe(self, rows: list, speculated: bool, seconds: float, tokens: int) -> None:
        """What a decode step of these rows took: the auto policy's measurements (batch 1 only)."""
        if self.policy is not None and len(rows) == 1:
            self.policy.record(speculated, seconds, tokens)

    def after_plain(self, rows: list, h: torch.Tensor, new: list) -> None:
        """A plain step fed each row's pending token (hiddens h [n, d]) and chose the next: the draft cache owes
        that position, paired with the new token, until a round catches up."""
        for i, (s, toks) in enumerate(zip(rows, new)):
            if s.h_pend is None or isinstance(toks, Exception):
                continue
            if len(s.next_pend) >= MAX_PENDING:
                s.h_pend, s.next_pend = None, []  # this request decodes plainly from now on
                continue
            s.h_pend.append(h[i:i + 1])
            s.next_pend.append(toks[0])

    @torch.inference_mode()
    def warmup(self) -> None:
        """Compile the verifying forward and the draft step (for a batch of 1)."""
        r = self.runner

        def zeros(b, S):  # token 0 at the scratch position: stores nothing
            return (torch.zeros(b, S, dtype=torch.long, device=r.device),
                    torch.full((b, S), r.max_len, dtype=torch.long, device=r.device))

        verify_fn, mtp_fn = self._steps(1)
        # verification feeds the pending token and up to k drafts; the draft step 1 token, or up to k + 1
        # when it catches up on accepted ones (torch.compile specializes sizes of 1, shares the others)
        ids, pos = zeros(1, self.k + 1)
        verify_fn(r.fast, ids, r.pool.layers, pos, 2, r.rope)
        for S in (1, 2):
            ids, pos = zeros(1, S)
            h = torch.zeros(1, S, r.config.hidden_size, dtype=r.dtype, device=r.device)
            mtp_fn(r.fast, h, ids, r.draft_pool.layers[0], pos, 2, r.rope)

    def _steps(self, n: int):
        """The verify and draft steps for a round of n rows: compiled for one row, else eager."""
        return self._compiled if n == 1 else (verify_step, mtp_step)

    def prefill(self, h, next_ids, pos, valid, span, rows) -> None:
        r = self.runner
        r.fast.forward_mtp_cached(1, h, next_ids, r.draft_pool.layers[0], pos, valid=valid, span=span,
                                  rope=r.rope, rows=rows)

    @torch.inference_mode()
    def catch_up(self, rows: list) -> None:
        """Write the draft-cache positions that plain steps left owed, all but each row's last (the round's own
        MTP step writes that one as it drafts), in one MTP forward. Done before a round rather than inside it,
        so that the policy times rounds without the catch-up, which a row owes only after plain steps."""
        behind = [s for s in rows if len(s.next_pend) > self.k + 1]
        if not behind:
            return
        c = [len(s.next_pend) - 1 for s in behind]
        self._mtp_owed(behind, c, row_index=torch.tensor([s.slot.row for s in behind], device=self.runner.device))
        for s, ci in zip(behind, c):
            s.slot.mtp_len += ci
            s.h_pend, s.next_pend = [s.h_pend[0][ci:]], s.next_pend[ci:]

    def _mtp_owed(self, rows: list, counts: list[int], row_index: torch.Tensor | None = None) -> torch.Tensor:
        """MTP module 1 over the first counts[i] owed positions of each row, right-padded (padding is stored
        nowhere), writing them into the draft cache; returns its outputs [n, max(counts), d]."""
        r = self.runner
        dev, n, S = r.device, len(rows), max(counts)
        h_in = torch.zeros(n, S, r.config.hidden_size, dtype=r.dtype, device=dev)
        nxt = torch.zeros(n, S, dtype=torch.long, device=dev)
        for i, s in enumerate(rows):
            h_in[i, :counts[i]] = _owed_hidden(s)[:counts[i]]
            nxt[i, :counts[i]] = torch.tensor(s.next_pend[:counts[i]], device=dev)
        start = torch.tensor([s.slot.mtp_len for s in rows], device=dev)
        valid = torch.arange(S, device=dev) < torch.tensor(counts, device=dev)[:, None]
        pos = torch.where(valid, start[:, None] + torch.arange(S, device=dev), 0)
        span = max(s.slot.mtp_len + ci for s, ci in zip(rows, counts))
        return r.fast.forward_mtp_cached(1, h_in, nxt, r.draft_pool.layers[0], pos, valid=valid, span=span,
                                         rope=r.rope, rows=row_index)

    def start(self, req, h_last: torch.Tensor, first_token: int) -> None:
        if self.policy is not None and not (req.params.greedy and not req.params.penalized):
            return  # auto mode: sampled requests decode plainly (their seeded output never depends on timing)
        if req.slot.mtp_len != len(req.prompt) - 1:
            return  # the draft cache lacks part of a reused prefix (auto mode): this request decodes plainly
        req.h_pend, req.next_pend = [h_last.unsqueeze(0)], [first_token]

    @torch.inference_mode()
    def round(self, rows: list) -> tuple[list[list[int]], list[torch.Tensor]]:
        """One round for the decoding requests (cache rows 0..n-1): MTP catch-up and k drafts per row, one
        verifying forward, acceptance per row. Returns each row's new tokens and the main model's logits
        for them (for a row whose sampling raised: the exception, and None).

        Request state (nanoseek.engine.request.Request): `slot.length` tokens are in the main cache, `pending`
        is the last token, not yet fed. Draft position i pairs the main hidden h_i with token i + 1; positions
        below `slot.mtp_len` are in the draft cache, and `h_pend` (pieces of [c, d]) / `next_pend` hold the
        inputs of positions slot.mtp_len .. slot.length - 1.
        """
        runner, k = self.runner, self.k
        t0 = time.perf_counter()
        fast, dev, n, rope = runner.fast, runner.device, len(rows), runner.rope
        verify_fn, mtp_fn = self._steps(n)
        budgets = [draft_budget(s, k) for s in rows]
        kr = max(budgets)
        # 1) MTP: write the positions whose inputs are now known, and draft d_1 from the last of them
        c = [len(s.next_pend) for s in rows]
        Sm = max(c)
        dview = runner.draft_pool.layers[0]
        if min(c) == Sm:  # every row has all its positions: no padding, the compiled path applies
            h_in = torch.stack([_owed_hidden(s) for s in rows])
            nxt = torch.tensor([s.next_pend for s in rows], device=dev)
            pos = torch.tensor([[s.slot.mtp_len + j for j in range(Sm)] for s in rows], device=dev)
            span = max(s.slot.mtp_len for s in rows) + Sm
            g = mtp_fn(fast, h_in, nxt, dview, pos, span, rope)[:, -1]
        else:
            g = self._mtp_owed(rows, c)[torch.arange(n, device=dev), torch.tensor(c, device=dev) - 1]  # [n, d]
        # greedy requests without penalties need only argmaxes: no distributions, no per-row sampler calls
        argmax_only = all(s.params.greedy and not s.params.penalized for s in rows)
        drafts: list[list[int]] = [[] for _ in rows]
        qs: list[list[torch.Tensor]] = [[] for _ in rows]
        failed: dict[int, Exception] = {}  # rows whose sampling raised: they end, the others go on
        snaps = [s.sampler.snapshot() if s.params.penalized else None for s in rows]
        for j in range(kr):
            dl = fast.draft_logits(g, self.draft_vocab).float()
            if argmax_only:
                for i, d in enumerate(dl.argmax(-1).tolist()):
                    drafts[i].append(d)
            else:
                if dl.shape[-1] < runner.config.vocab_size:  # ids outside the draft vocabulary: probability 0
                    dl = torch.cat((dl, dl.new_full((n, runner.config.vocab_size - dl.shape[-1]), float("-inf"))), -1)
                for i, s in enumerate(rows):
                    q, d = None, 0  # a failed row keeps drafting token 0, which nothing reads
                    if i not in failed:
                        try:
                            q = s.sampler.probs(dl[i])
                            d = s.sampler.draw(q)
                            s.sampler.observe(d)
                        except Exception as e:
                            failed[i] = e
                    drafts[i].append(d)
                    qs[i].append(q)
            if j + 1 < kr:  # the next draft: MTP at the following position, on its own output (docs/architecture.md §5.4)
                p = torch.tensor([[s.slot.length + j] for s in rows], device=dev)
                ids = torch.tensor([[d[-1]] for d in drafts], device=dev)
                span = max(s.slot.length for s in rows) + j + 1
                if min(budgets) > j + 1:
                    g = mtp_fn(fast, g[:, None], ids, dview, p, span, rope)[:, 0]
                else:  # rows out of budget compute but do not store
                    ok = torch.tensor([[j + 1 < b] for b in budgets], device=dev)
                    g = fast.forward_mtp_cached(1, g[:, None], ids, dview, torch.where(ok, p, 0), valid=ok,
                                                 span=span, rope=rope)[:, 0]
        for s, snap in zip(rows, snaps):
            if snap is not None:
                s.sampler.restore(snap)
        for s in rows:
            s.slot.mtp_len = s.slot.length
        # 2) verify the pending token and the drafts in one forward
        ids = torch.tensor([[s.pending] + d for s, d in zip(rows, drafts)], device=dev)
        base = torch.tensor([s.slot.length for s in rows], device=dev)
        valid = torch.arange(kr + 1, device=dev) <= torch.tensor(budgets, device=dev)[:, None]
        pos = torch.where(valid, base[:, None] + torch.arange(kr + 1, device=dev), 0)
        span = max(s.slot.length + b for s, b in zip(rows, budgets)) + 1
        if min(budgets) == kr:
            h, logits = verify_fn(fast, ids, runner.pool.layers, pos, span, rope)
        else:
            h = fast.forward_cached(ids, runner.pool.layers, pos, valid=valid, span=span, rope=rope)
            logits = fast.logits(h)
        logits = logits.float()  # [n, kr + 1, V]
        # 3) accept
        new, per_token = [], []
        target = logits.argmax(-1).tolist() if argmax_only else None
        for i, s in enumerate(rows):
            b = budgets[i]
            if argmax_only:  # the acceptance rule with one-hot p and q: keep drafts while they are the target's argmax
                a = 0
                while a < b and drafts[i][a] == target[i][a]:
                    a += 1
                toks = drafts[i][:a] + [target[i][a]]
            else:
                try:
                    if i in failed:
                        raise failed[i]
                    toks = verify(s.sampler, logits[i, :b + 1], drafts[i][:b], qs[i][:b])
                except Exception as e:  # the scheduler ends this request alone
                    new.append(e)
                    per_token.append(None)
                    continue
            a = len(toks) - 1
            s.out.drafted += b
            s.out.accepted += a
            s.h_pend, s.next_pend = [h[i, :a + 1]], toks
            s.slot.tokens.extend([s.pending] + drafts[i][:a])
            s.slot.length += a + 1
            new.append(toks)
            per_token.append(logits[i, :a + 1])
        runner.decode_tokens += n
        runner.decode_seconds += time.perf_counter() - t0
        return new, per_token
