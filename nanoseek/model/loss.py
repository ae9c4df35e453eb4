"""Cross-entropy through the output head without materializing the logits.

The [tokens, vocab] logits of a training step are the largest activation the model makes (2048 x 8192 fp32
= 64 MiB for cpu-small), and the plain path touches it five times (matmul, fp32 cast, log-softmax, its
backward, the zero-filled NLL gradient) — about a third of a CPU training step in the profile. Here the
head matmul and the loss run chunk by chunk: each chunk's logits live only long enough to produce the loss
and the gradients for the hidden states and the head weight, which the backward then only scales.
"""

from __future__ import annotations

import torch

from nanoseek.model.layers import autocast_off

IGNORE_INDEX = -100


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk_rows, want_grad):
        # hidden [N, d], weight [V, d], targets [N]; mean over targets != IGNORE_INDEX
        n_valid = (targets != IGNORE_INDEX).sum()
        denom = n_valid.clamp(min=1).to(torch.float32)
        needs_h, needs_w = want_grad and ctx.needs_input_grad[0], want_grad and ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        grad_h = torch.empty_like(hidden) if needs_h else None
        grad_w = None  # fp32, from the first chunk's product (no zero-filled [V, d] buffer)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start:start + chunk_rows].to(compute_dtype)
            t = targets[start:start + chunk_rows]
            valid = t != IGNORE_INDEX
            safe_t = t.clamp(min=0).unsqueeze(1)
            logits = h @ w.t()
            # One softmax pass in the matmul dtype (fp32 arithmetic inside; on a CPU several times faster than
            # an fp32 log-softmax of bf16 logits, which first writes an fp32 copy), and log p(target) read
            # from it (_target_logprob).
            g = torch.softmax(logits, dim=-1)
            logp_t = _target_logprob(logits, g, safe_t, counted=valid)
            del logits
            total -= logp_t.squeeze(1).masked_fill(~valid, 0.0).sum()  # not * valid: an ignored row's may be -inf
            if not (needs_h or needs_w):
                continue
            # d loss / d logits = (softmax - onehot) * valid / n_valid: the softmax in place, the target column
            # written from fp32, and the per-row factor valid / n_valid applied to the small [rows, d] operands.
            # (index_put_, not scatter_: on CPU a scatter_ along a 8192-wide dim walked the whole [1024, 8192]
            # tensor, 12 ms against 0.01 ms for these 1024 writes)
            g.index_put_((torch.arange(g.shape[0], device=g.device), safe_t.squeeze(1)),
                         (logp_t.squeeze(1).exp() - 1).to(compute_dtype))
            row_scale = (valid.to(torch.float32) / denom).unsqueeze(1)
            if needs_h:
                grad_h[start:start + chunk_rows] = (g @ w).float().mul_(row_scale).to(hidden.dtype)
            if needs_w:
                chunk_grad_w = (g.t() @ (h.float() * row_scale).to(compute_dtype)).float()
                grad_w = chunk_grad_w if grad_w is None else grad_w.add_(chunk_grad_w)
        if needs_w and grad_w is None:  # no rows at all
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ctx.save_for_backward(grad_h if needs_h else None, grad_w if needs_w else None)
        ctx.weight_dtype = weight.dtype
        return total / denom

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


def _target_logprob(logits: torch.Tensor, probs: torch.Tensor, target: torch.Tensor,
                    check_on_host: bool | None = None, counted: torch.Tensor | None = None) -> torch.Tensor:
    """log p(target) [rows, 1] in fp32, from the softmax probs of logits [rows, V] (target [rows, 1]).
    counted [rows] bool: the rows whose value is used (the others, ignored targets, skip the fallback below).

    log probs[target] is exact up to the rounding of probs (8 significant bits in bf16: |error| <= 2^-9 nats,
    below the rounding of the bf16 logits themselves), without another pass over the logits — a max over a
    [1024, 8192] chunk cost as much as the softmax (13 ms a step in bf16 on a CPU). A target under fp32's
    smallest normal probability (87 nats or more below the row's best) rounds to 0 or a denormal there; those
    rows take it from a logsumexp of their own logits. Finding them needs a host round trip: on a CPU it is
    free, on an accelerator it would stall every chunk, so there (check_on_host False) every row's lse comes
    from the row's max logit m instead: p(m) = 1 / sum exp(l - m) >= 1 / V never underflows, and
    lse = m - log p(m)."""
    if check_on_host is None:
        check_on_host = logits.device.type == "cpu"
    if not check_on_host:
        top, top_idx = logits.max(dim=-1, keepdim=True)
        lse = top.float() - probs.gather(1, top_idx).float().log()
        return logits.gather(1, target).float() - lse
    p_t = probs.gather(1, target).float()
    logp = p_t.log()
    low = (p_t < torch.finfo(torch.float32).tiny).squeeze(1)
    if counted is not None:
        low &= counted
    if bool(low.any()):
        rows = low.nonzero().squeeze(1)
        row_logits = logits[rows].float()
        logp[rows] = row_logits.gather(1, target[rows]) - torch.logsumexp(row_logits, dim=-1, keepdim=True)
    return logp


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         compute_dtype: torch.dtype | None = None, chunk_elems: int = 2**23) -> torch.Tensor:
    """Mean CE of (hidden @ weight.T) against targets (IGNORE_INDEX skipped), with the matmuls in
    compute_dtype (bf16 under autocast) and softmax in fp32. hidden [..., d], targets [...]."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    compute_dtype = compute_dtype or hidden.dtype
    chunk_rows = max(1, chunk_elems // weight.shape[0])
    # gradients are computed in the forward pass, so only when a backward can follow
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with autocast_off(hidden):
        return _LinearCrossEntropy.apply(hidden, weight, targets, compute_dtype, chunk_rows, want_grad)


class _LinearLogprobs(torch.autograd.Function):
    """Per-token log p(target) and entropy through the output head, chunk by chunk. The backward recomputes
    each chunk's logits instead of keeping them, so memory holds one chunk of logits at a time whatever the
    batch (RL computes these for the policy, the old policy and the reference on every rollout)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk_rows):
        N = hidden.shape[0]
        w = weight.to(compute_dtype)
        logp = torch.zeros(N, dtype=torch.float32, device=hidden.device)
        entropy = torch.zeros(N, dtype=torch.float32, device=hidden.device)
        lse = torch.zeros(N, dtype=torch.float32, device=hidden.device)
        for start in range(0, N, chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = (hidden[rows].to(compute_dtype) @ w.t()).float()
            lse[rows] = torch.logsumexp(logits, dim=-1)
            t = targets[rows]
            valid = t != IGNORE_INDEX
            picked = logits.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1) - lse[rows]
            logp[rows] = picked * valid
            p = torch.exp(logits - lse[rows, None])
            entropy[rows] = lse[rows] - (p * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.compute_dtype, ctx.chunk_rows = compute_dtype, chunk_rows
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        cd, chunk_rows = ctx.compute_dtype, ctx.chunk_rows
        w = weight.to(cd)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            h = hidden[rows].to(cd)
            t = targets[rows]
            g = grad_logp[rows].float() * (t != IGNORE_INDEX)
            # d logp_t / d logits = onehot(target) - softmax(logits): scaled by the incoming gradient per row
            d = torch.exp((h @ w.t()).float() - lse[rows, None]).mul_(-g[:, None])
            d.index_put_((torch.arange(d.shape[0], device=d.device), t.clamp(min=0)), g, accumulate=True)
            d = d.to(cd)
            if need_h:
                grad_h[rows] = (d @ w).to(hidden.dtype)
            if need_w:
                grad_w += (d.t() @ h).float()
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    compute_dtype: torch.dtype | None = None, chunk_elems: int = 2**23
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ weight.T)[target] per position (0 where target is IGNORE_INDEX), differentiable,
    and the distribution's entropy (not differentiable), both fp32 with the shape of targets. The full logits
    are never materialized: chunk_elems bounds one chunk's [rows, vocab]."""
    shape = targets.shape
    hidden = hidden.reshape(-1, hidden.shape[-1])
    compute_dtype = compute_dtype or hidden.dtype
    chunk_rows = max(1, chunk_elems // weight.shape[0])
    with autocast_off(hidden):
        logp, entropy = _LinearLogprobs.apply(hidden, weight, targets.reshape(-1), compute_dtype, chunk_rows)
    return logp.view(shape), entropy.view(shape)
