"""Multi-head Latent Attention (spec section 2): the training path.

Keys and values come from a small latent c^KV (kv_lora_rank wide) plus one rotary key shared by all heads.
Training and prefill expand the latent into per-head keys and values and run fused SDPA. Parameter names
match the Hugging Face checkpoint layout exactly, so state dicts map one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.layers import RMSNorm
from nanoseek.model.rope import apply_rope, softmax_scale


# ---- the latent-cache path (generation) ------------------------------------------------------------------
# The cache holds, per token and layer, the normalized latent and the rotated shared rope key side by side:
# [c^KV (r_kv) | k^R (d_r)] (spec 2.3, "absorb"). MLA.forward_cached reads and writes it.

# Up to this many new tokens per row a step runs absorbed (decode, speculative verification); longer steps
# (prefill) expand the latent into per-head K/V, which is cheaper once there are many queries (spec 2.3).
ABSORB_MAX_TOKENS = 8


@dataclass
class LatentStep:
    """Where one cached step writes its tokens and what they attend to; built once per model step and
    shared by every layer (DeepSeekV3.forward_cached builds it).

    A new token at position p of row b is stored at cache[b, p] and attends to cache[b, 0..p].
    """

    rows: torch.Tensor  # [N] cache row of each stored token
    pos: torch.Tensor  # [N] its position
    select: torch.Tensor | None  # [N] index into the flattened [B*S] new tokens (None: all, in order)
    span: int  # attention reads cache[:, :span]
    mask: torch.Tensor | None  # bool, True = may attend; broadcastable to the scores of the chosen path
    causal: bool  # expanded path over the new tokens only with a causal mask (prefill from position 0)
    absorbed: bool


def latent_step(positions: torch.Tensor, n_heads: int, valid: torch.Tensor | None = None, span: int | None = None,
                absorbed: bool | None = None) -> LatentStep:
    """Plan one cached step for new tokens at positions [B, S] (valid [B, S]: False marks right padding,
    which is computed but never stored). span: cache prefix to attend over (default max position + 1)."""
    B, S = positions.shape
    dev = positions.device
    if span is None:
        span = int(positions.max()) + 1
    if absorbed is None:
        absorbed = S <= ABSORB_MAX_TOKENS
    rows = torch.arange(B, device=dev).repeat_interleave(S)
    pos, select = positions.reshape(-1), None
    if valid is not None and not bool(valid.all()):
        select = valid.reshape(-1).nonzero().squeeze(1)
        rows, pos = rows[select], pos[select]
    causal = (not absorbed and span == S
              and bool((positions == torch.arange(S, device=dev)).all()))
    mask = None
    if not causal and not (absorbed and B == 1 and S == 1):  # one row, one token: everything up to span is visible
        visible = torch.arange(span, device=dev) <= positions.unsqueeze(-1)  # [B, S, span]
        if not absorbed:
            mask = visible.unsqueeze(1)  # [B, 1, S, span]
        elif S == 1:
            mask = visible.view(B, 1, 1, span)  # broadcast over the H query rows
        else:  # absorbed query rows are (token, head) pairs, token-major
            mask = visible[:, None, :, None, :].expand(B, 1, S, n_heads, span).reshape(B, 1, S * n_heads, span)
    return LatentStep(rows=rows, pos=pos, select=select, span=span, mask=mask, causal=causal, absorbed=absorbed)


@dataclass
class AbsorbedWeights:
    key: tuple  # identity and version of kv_b_proj.weight they were derived from
    w_uk: torch.Tensor  # [H, d_n, r_kv]: q^C_h -> latent space (W^UK_h^T q^C_h)
    w_uv: torch.Tensor  # [H, r_kv, d_v]: attended latent -> per-head value (W^UV_h)


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


    # ---- latent-cache path -------------------------------------------------------------------------------
    def absorbed_weights(self) -> AbsorbedWeights:
        """W^UK and W^UV split out of kv_b_proj, derived once and again only when the weight changes (an RL
        trainer stepping the optimizer between rollouts: in-place updates bump the tensor's version)."""
        w = self.kv_b_proj.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        cached = self.__dict__.get("_absorbed")
        if cached is None or cached.key != key:
            per_head = w.detach().view(self.n_heads, self.nope_dim + self.v_dim, self.kv_lora_rank)
            w_uk, w_uv = per_head.split([self.nope_dim, self.v_dim], dim=1)
            cached = AbsorbedWeights(key, w_uk.contiguous(), w_uv.transpose(1, 2).contiguous())
            self.__dict__["_absorbed"] = cached  # derived data, not a parameter: stays out of the state dict
        return cached

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: torch.Tensor,
                       step: LatentStep) -> torch.Tensor:
        """Attention of new tokens x [B, S, d] over this layer's latent cache kv [B, T_max, r_kv + d_r].

        Stores the new tokens' latent and rope key, then attends. Absorbed (decode): queries move into latent
        space through W^UK, attend over [latent | rope key] as a single MQA key, and the attended latent goes
        out through W^UV; the cache is never re-expanded. Expanded (prefill): the training path's math over
        per-head keys and values built from the latents.
        """
        B, S, _ = x.shape
        H, r = self.n_heads, self.kv_lora_rank
        q_nope, q_rope = self.project_q(x).split([self.nope_dim, self.rope_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos.unsqueeze(-2), sin.unsqueeze(-2))
        latent, k_rope = self.project_latent(x, cos, sin)
        new = torch.cat((latent, k_rope), dim=-1)
        flat = new.view(B * S, -1) if step.select is None else new.view(B * S, -1)[step.select]
        kv.index_put_((step.rows, step.pos), flat.to(kv.dtype))
        if step.absorbed:
            w = self.absorbed_weights()
            # q' = W^UK_h^T q^C_h for every head at once: [H, B*S, d_n] @ [H, d_n, r] (spec 2.3)
            q_lat = torch.bmm(q_nope.reshape(B * S, H, self.nope_dim).transpose(0, 1), w.w_uk)
            q = torch.cat((q_lat.transpose(0, 1).view(B, S, H, r), q_rope), dim=-1).view(B, 1, S * H, r + self.rope_dim)
            cache = kv[:, None, : step.span].to(q.dtype)  # [B, 1, span, r + d_r]: one key shared by all heads
            # The value is the latent, i.e. the key's first r columns. Passing the whole key as the value keeps
            # q, k, v one width (PyTorch's fused CPU kernel needs that); the extra d_r output columns are dropped.
            o = F.scaled_dot_product_attention(q, cache, cache, attn_mask=step.mask, scale=self.scale)
            o = o.view(B * S, H, r + self.rope_dim)[..., :r].transpose(0, 1)  # [H, B*S, r]
            o = torch.bmm(o, w.w_uv)  # o_h = W^UV_h (sum_s a_s c_s): [H, B*S, d_v]
            return self.o_proj(o.transpose(0, 1).reshape(B, S, H * self.v_dim))

        if step.causal:  # prefill from position 0: the new tokens are the whole context
            lat, k_r = latent, k_rope
        else:
            lat, k_r = kv[:, : step.span, :r].to(x.dtype), kv[:, : step.span, r:].to(x.dtype)
        T = lat.shape[1]
        k_nope, v = self.kv_b_proj(lat).view(B, T, H, self.nope_dim + self.v_dim).split(
            [self.nope_dim, self.v_dim], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)
        k = torch.cat((k_nope, k_r.unsqueeze(2).expand(B, T, H, self.rope_dim)), dim=-1).transpose(1, 2)
        pad = self.qk_dim - self.v_dim if self.v_dim < self.qk_dim else 0
        v = (F.pad(v, (0, pad)) if pad else v).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, is_causal=step.causal, scale=self.scale)
        if pad:
            o = o[..., : self.v_dim]
        return self.o_proj(o.transpose(1, 2).reshape(B, S, H * self.v_dim))
