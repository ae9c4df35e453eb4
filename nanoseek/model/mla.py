"""Multi-head Latent Attention (docs/architecture.md §3).

Keys and values come from a small latent c^KV (kv_lora_rank wide) plus one rotary key k^R shared by all
heads; queries come from the input directly (q_proj) or through their own low-rank latent c^Q (q_a_proj,
q_a_layernorm, q_b_proj). This module computes attention in the expanded form: the latent is projected up to
per-head keys and values (kv_b_proj) and fused SDPA attends over them. Training uses it, and so does
generation for prefill, where the `cache` hook stores the new tokens' latents and returns the cached context
to attend over; decode steps take the absorbed form instead (nanoseek.model.inference, docs/architecture.md §3.2).

Parameter names match the Hugging Face checkpoint layout exactly, so state dicts map one to one.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.layers import RMSNorm, compute_dtype
from nanoseek.model.rope import apply_rope, softmax_scale


class LatentCacheHook(Protocol):
    """What MLA.forward's `cache` argument does (nanoseek.model.inference implements it)."""

    def update(self, latent: torch.Tensor, k_rope: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Store the new tokens' latent [B, S, r_kv] and rotated rope key [B, S, d_r]; return the context they
        attend to: (latent [B, T, r_kv], k_rope [B, T, d_r], attn_mask or None, is_causal)."""


class MLA(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.n_heads = c.num_attention_heads
        self.q_lora_rank = c.q_lora_rank
        self.kv_lora_rank = c.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        self.qk_dim = c.qk_head_dim
        self.scale = softmax_scale(c)
        self.dropout = c.attention_dropout
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(c.hidden_size, self.n_heads * self.qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=c.attention_bias)
            # The latent norms use eps 1e-6 whatever rms_norm_eps says, as the released code does (docs/architecture.md §9.13).
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, eps=1e-6)
            self.q_b_proj = nn.Linear(c.q_lora_rank, self.n_heads * self.qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, bias=c.attention_bias)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, eps=1e-6)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, self.n_heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.v_dim, c.hidden_size, bias=c.attention_bias)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, d] -> queries [B, T, H, d_nope + d_rope] (rope part not yet rotated)."""
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        return q.view(*x.shape[:-1], self.n_heads, self.qk_dim)

    def project_latent(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, d] -> normalized KV latent [B, T, r_kv] and rotated shared rope key [B, T, d_r]: all that a
        decoding cache holds per token and layer (docs/architecture.md §3.3)."""
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        return self.kv_a_layernorm(latent), apply_rope(k_rope, cos, sin)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: LatentCacheHook | None = None) -> torch.Tensor:
        """Causal self-attention over x [B, T, d]; cos/sin [T, d_r/2] or [B, T, d_r/2].

        attn_mask (optional, bool, True = may attend, broadcastable to [B, H, T, T]) replaces the plain causal
        mask, e.g. for padded batches or packed documents. cache (generation): stores this step's latents and
        supplies the context to attend over, with its mask.
        """
        B, T, _ = x.shape
        q_nope, q_rope = self.project_q(x).split([self.nope_dim, self.rope_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos.unsqueeze(-2), sin.unsqueeze(-2))
        latent, k_rope = self.project_latent(x, cos, sin)
        is_causal = attn_mask is None
        if cache is not None:
            latent, k_rope, attn_mask, is_causal = cache.update(latent, k_rope)
        q = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)
        o = self.attend_expanded(q, latent, k_rope, attn_mask, is_causal, training=self.training and cache is None)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.v_dim))

    def attend_expanded(self, q: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                        attn_mask: torch.Tensor | None, is_causal: bool, training: bool = False) -> torch.Tensor:
        """Queries q [B, H, S, d_qk] over the context's latents [B, T, r_kv] and rope keys [B, T, d_r], expanded
        to per-head keys k = [W^UK c ; k^R] and values v = W^UV c. Returns [B, H, S, d_v]."""
        B, T, _ = latent.shape
        H = self.n_heads
        k_nope, v = self.kv_b_proj(latent).view(B, T, H, self.nope_dim + self.v_dim).split(
            [self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat((k_nope, k_rope.unsqueeze(2).expand(B, T, H, self.rope_dim)), dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        dropout = self.dropout if training else 0.0
        if use_matmul_attention(q, k, dropout):
            return matmul_attention(q, k, v, attn_mask, is_causal, self.scale)
        # PyTorch's fused CPU attention kernel needs equal q/k and v head sizes; padding v with zeros and
        # slicing the output is exact and ~2x faster than the fallback (docs/performance.md §5.2).
        pad = self.qk_dim - self.v_dim if self.v_dim < self.qk_dim else 0
        if pad:
            v = F.pad(v, (0, pad))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout,
                                           scale=self.scale)
        return o[..., : self.v_dim] if pad else o


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
    with torch.autocast(q.device.type, enabled=False):
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
# ~10-15% less time in fp32 and about the same in bf16; four and eight blocks were slower in bf16 (the smaller
# bf16 matmuls lose more than the skipped work saves) (docs/performance.md §5.2).
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
