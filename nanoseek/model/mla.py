"""Multi-head Latent Attention (docs/architecture.md §3).

Keys and values come from a small latent c^KV (kv_lora_rank wide) plus one rotary key k^R shared by all
heads; queries come from the input directly (q_proj) or through their own low-rank latent c^Q (q_a_proj,
q_a_layernorm, q_b_proj). This module computes attention in the expanded form: the latent is projected up to
per-head keys and values (kv_b_proj) and `nanoseek.model.attention` attends over them. Training uses it, and so does
generation for prefill, where the `cache` hook stores the new tokens' latents and returns the cached context
to attend over; decode steps take the absorbed form instead (nanoseek.model.inference, docs/architecture.md §3.2).

Parameter names match the Hugging Face checkpoint layout exactly, so state dicts map one to one.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.attention import attention
from nanoseek.model.layers import RMSNorm
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
        return attention(q, k, v.transpose(1, 2), attn_mask, is_causal, self.scale,
                         self.dropout if training else 0.0)
