"""Attention over expanded per-head keys and values: what it computes, and the implementations that compute it
fast in each situation.

Every implementation returns softmax(q k^T * scale, masked) v, what `F.scaled_dot_product_attention` (the
reference) computes: is_causal lets query i see keys 0..i; attn_mask (bool, True = may attend, broadcastable
to [B, H, S, T]) replaces the causal mask; a query that may attend to nothing gets zeros. `attention(...)` is
the one entry and picks the implementation, in this one place:

    situation                                              implementation
    CPU, no dropout, [B, H, S, T] scores that fit          matmul_attention (two matmuls around a softmax;
                                                           causal self-attention in query blocks)
    otherwise (GPUs, long contexts, attention dropout)     the fused kernel, v zero-padded on CPU

The tests hold matmul_attention equal to the fused kernel, in values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanoseek.model.layers import autocast_off, compute_dtype


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool,
              scale: float, dropout: float = 0.0) -> torch.Tensor:
    """q [B, H, S, d_qk], k [B, H, T, d_qk], v [B, H, T, d_v] -> [B, H, S, d_v]."""
    if use_matmul_attention(q, k, dropout):
        return matmul_attention(q, k, v, attn_mask, is_causal, scale)
    # PyTorch's fused CPU attention kernel needs equal q/k and v head sizes; padding v with zeros and
    # slicing the output is exact and ~2x faster than the fallback (docs/performance.md §5.2).
    d_v = v.shape[-1]
    pad = q.shape[-1] - d_v if d_v < q.shape[-1] else 0
    if pad:
        v = F.pad(v, (0, pad))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout,
                                       scale=scale)
    return o[..., :d_v] if pad else o


# On a CPU, PyTorch's fused attention kernel runs far below the matmul peak at MLA's head sizes (d_qk 48 in
# cpu-small): two batched matmuls around one softmax take half its time forward + backward in bf16 and a
# little less in fp32 (docs/performance.md §5.2), as long as the [B, H, S, T] scores are small enough to hold.
# GPUs, long contexts and attention dropout take the fused kernel.
MATMUL_ATTENTION_MAX_SCORES = 1 << 24


def use_matmul_attention(q: torch.Tensor, k: torch.Tensor, dropout: float) -> bool:
    B, H, S, _ = q.shape
    return q.device.type == "cpu" and dropout == 0.0 and B * H * S * k.shape[-2] <= MATMUL_ATTENTION_MAX_SCORES


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                     is_causal: bool, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v, as scaled_dot_product_attention computes it (is_causal: query i sees
    keys 0..i; attn_mask bool, True = may attend). Scores and probabilities are in the matmul dtype (bf16 under
    autocast, as transformers' eager attention has them); the softmax does its arithmetic in fp32."""
    dtype = compute_dtype(q)
    with autocast_off(q):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        # the mask as an additive bias ([.., S, T], H times smaller than the scores), added in place: no pass
        # over the scores in the backward
        bias, blind = None, None  # blind: the queries that may attend to nothing, if any
        if is_causal:  # query i sees keys 0..i: every query sees something
            S, T = q.shape[-2], k.shape[-2]
            bias = torch.full((S, T), float("-inf"), dtype=dtype, device=q.device).triu_(1)
            if S == T and S >= CAUSAL_BLOCKS:
                return _causal_blocks(q * scale, k, v, bias)
        elif attn_mask is not None:
            # A query that may attend to nothing (padding) gets zeros, as the fused kernel gives, not NaN: its
            # row is left unmasked and its output zeroed.
            sees = attn_mask.any(dim=-1, keepdim=True)
            blocked = attn_mask.logical_not()
            if not bool(sees.all()):
                blind = sees.logical_not()
                blocked &= sees
            bias = torch.zeros(blocked.shape, dtype=dtype, device=q.device).masked_fill_(blocked, float("-inf"))
        scores = torch.matmul(q * scale, k.transpose(-2, -1))
        if bias is not None:
            scores.add_(bias)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return out if blind is None else out.masked_fill(blind, 0.0)


# Causal self-attention in query blocks: block j (queries a..b) needs only keys 0..b, so the masked upper
# triangle is neither multiplied, nor added to, nor soft-maxed, forward or backward. Two blocks do 3/4 of the
# full square's work: one layer's attention, forward + backward at 8 x 8 heads x 256 tokens, 2 threads, took
# ~10-15% less time in fp32 and about the same in bf16 on Zen 4, ~25% (fp32) and ~12% (bf16) less on an Intel
# Xeon; four and eight blocks were slower in bf16 (the smaller bf16 matmuls lose more than the skipped work
# saves) (docs/performance.md §5.2).
CAUSAL_BLOCKS = 2


def _causal_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T + bias) v for causal self-attention (q already scaled, bias [S, S] the causal -inf mask),
    computed over CAUSAL_BLOCKS blocks of queries, each against the keys up to its last query."""
    S = q.shape[-2]
    rows = -(-S // CAUSAL_BLOCKS)
    outs = []
    for a in range(0, S, rows):
        b = min(a + rows, S)
        scores = torch.matmul(q[..., a:b, :], k[..., :b, :].transpose(-2, -1))
        scores.add_(bias[a:b, :b])
        outs.append(torch.matmul(torch.softmax(scores, dim=-1), v[..., :b, :]))
    return torch.cat(outs, dim=-2)
