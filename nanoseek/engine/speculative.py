"""Speculative decoding with the model's own MTP module as the draft (spec 5.4).

Each round the MTP module drafts k tokens from the main model's last hidden state, the main model scores the
pending token and all drafts in one forward, and the standard rule (Leviathan et al. 2023; Chen et al. 2023)
decides how many drafts stand: draft d_j is kept with probability min(1, p_j(d_j) / q_j(d_j)); the first
rejected one is replaced by a draw from norm(max(p_j - q_j, 0)); if all stand, one more token comes from
p_k. The output then has exactly the target distribution p; for greedy requests p and q are one-hot and the
rule keeps a draft iff it is the target's argmax, so the output is the plain greedy output token for token.

Drafts beyond the first reuse MTP module 1 on its own normed output (what serving engines do, spec 5.4):
an approximation that only affects how many drafts are accepted, never what is output.
"""

from __future__ import annotations

import torch

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
