"""Multi-head Latent Attention (spec section 2): the training path.

Keys and values come from a small latent c^KV (kv_lora_rank wide) plus one rotary key shared by all heads.
Training and prefill expand the latent into per-head keys and values and run fused SDPA. Parameter names
match the Hugging Face checkpoint layout exactly, so state dicts map one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.layers import RMSNorm
from nanoseek.model.rope import apply_rope, softmax_scale


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
            # The latent norms use eps 1e-6 regardless of rms_norm_eps, as HF does (spec pitfall 13).
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
        """x [B, T, d] -> normalized KV latent [B, T, r_kv] and rotated shared rope key [B, T, d_r].

        These two are all a decoding cache needs to hold per token (spec 2.3, "absorb").
        """
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        return self.kv_a_layernorm(latent), apply_rope(k_rope, cos, sin)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Causal self-attention over x [B, T, d]; cos/sin [T, d_r/2] or [B, T, d_r/2].

        attn_mask (optional, bool, True = may attend, broadcastable to [B, H, T, T]) replaces the plain
        causal mask, e.g. for padded batches or packed documents.
        """
        B, T, _ = x.shape
        H = self.n_heads
        q_nope, q_rope = self.project_q(x).split([self.nope_dim, self.rope_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos.unsqueeze(-2), sin.unsqueeze(-2))
        latent, k_rope = self.project_latent(x, cos, sin)
        k_nope, v = self.kv_b_proj(latent).view(B, T, H, self.nope_dim + self.v_dim).split(
            [self.nope_dim, self.v_dim], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)
        k = torch.cat((k_nope, k_rope.unsqueeze(2).expand(B, T, H, self.rope_dim)), dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        # PyTorch's fused CPU attention kernel needs equal q/k and v head sizes; padding v with zeros and
        # slicing the output is exact and ~2x faster than the fallback (shared/reference/cpu-performance.md).
        pad = self.qk_dim - self.v_dim if self.v_dim < self.qk_dim else 0
        if pad:
            v = F.pad(v, (0, pad))
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
        if pad:
            o = o[..., : self.v_dim]
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * self.v_dim))
