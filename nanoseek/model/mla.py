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
from nanoseek.model.packed import PackedLinear, derived
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
    rope2: tuple[torch.Tensor, torch.Tensor] | None = None  # absorbed path: rope_halves(cos, sin), [B, S, 1, d_r]


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
class DecodeWeights:
    """An MLA layer's weights arranged for the absorbed decode step, derived once from its parameters.

    in_proj fuses every projection of the layer input into one matmul: without query compression its rows
    are [q^C of all heads | q^R of all heads | k^R | c^KV] (q_proj and kv_a_proj_with_mqa), with it
    [c^Q | k^R | c^KV] and q_b's rows become [q^C of all heads | q^R of all heads]. Rope rows are reordered
    within each d_r block to [even rows | odd rows], so a rotation is x * cos2 + roll(x) * sin2 on
    [evens | odds] halves: the layout apply_rope produces and the cache holds.
    """

    in_proj: PackedLinear
    q_b: PackedLinear | None
    o_proj: PackedLinear
    w_uk: torch.Tensor  # [H, d_n, r_kv]: q^C_h -> latent space (W^UK_h^T q^C_h)
    w_uv: torch.Tensor  # [H, r_kv, d_v]: attended latent -> per-head value (W^UV_h)


def rope_halves(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [..., d_r/2] -> cos2 = [cos | cos], sin2 = [-sin | sin] for rotate_halves."""
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rotate_halves(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """apply_rope for input already laid out [evens | odds]: same rotation, same output layout."""
    return torch.addcmul(x * cos2, x.roll(x.shape[-1] // 2, dims=-1), sin2)

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
    def decode_weights(self) -> DecodeWeights:
        """DecodeWeights, rebuilt only when a parameter changes (nanoseek.model.packed.derived)."""
        return derived(self, self._build_decode_weights)

    def _build_decode_weights(self) -> DecodeWeights:
        H, dn, dr, r = self.n_heads, self.nope_dim, self.rope_dim, self.kv_lora_rank
        eo = torch.cat((torch.arange(0, dr, 2), torch.arange(1, dr, 2)))  # [evens | odds] row order
        kv_a = self.kv_a_proj_with_mqa
        latent_w, krope_w = kv_a.weight.detach().split([r, dr])
        kv_bias = None
        if kv_a.bias is not None:
            lb, kb = kv_a.bias.detach().split([r, dr])
            kv_bias = [kb[eo], lb]

        def split_q(w: torch.Tensor) -> list[torch.Tensor]:  # [H*(dn+dr), in] -> [nope rows, rope rows (eo)]
            heads = w.detach().view(H, dn + dr, -1)
            return [heads[:, :dn].reshape(H * dn, -1), heads[:, dn:][:, eo].reshape(H * dr, -1)]

        if self.q_lora_rank is None:
            in_w = torch.cat([*split_q(self.q_proj.weight), krope_w[eo], latent_w])
            in_b = None if kv_bias is None else torch.cat([kv_bias[0].new_zeros(H * (dn + dr)), *kv_bias])
            q_b = None
        else:
            qa = self.q_a_proj
            in_w = torch.cat([qa.weight.detach(), krope_w[eo], latent_w])
            in_b = None
            if kv_bias is not None or qa.bias is not None:
                qa_b = qa.bias.detach() if qa.bias is not None else in_w.new_zeros(self.q_lora_rank)
                in_b = torch.cat([qa_b, *(kv_bias or [in_w.new_zeros(dr), in_w.new_zeros(r)])])
            q_b = PackedLinear(torch.cat(split_q(self.q_b_proj.weight)))
        per_head = self.kv_b_proj.weight.detach().view(H, dn + self.v_dim, r)
        w_uk, w_uv = per_head.split([dn, self.v_dim], dim=1)
        o = self.o_proj
        return DecodeWeights(PackedLinear(in_w, in_b), q_b, PackedLinear(o.weight, o.bias), w_uk.contiguous(),
                             w_uv.transpose(1, 2).contiguous())

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: torch.Tensor,
                       step: LatentStep) -> torch.Tensor:
        """Attention of new tokens x [B, S, d] over this layer's latent cache kv [B, T_max, r_kv + d_r].

        Stores the new tokens' latent and rope key, then attends. Absorbed (decode): queries move into latent
        space through W^UK, attend over [latent | rope key] as a single MQA key, and the attended latent goes
        out through W^UV; the cache is never re-expanded. Expanded (prefill): the training path's math over
        per-head keys and values built from the latents. cos/sin: [B, S, d_r/2]; for the absorbed path
        step.rope2 holds their rope_halves.
        """
        if step.absorbed:
            return self._forward_absorbed(x, kv, step)
        B, S, _ = x.shape
        H, r = self.n_heads, self.kv_lora_rank
        q_nope, q_rope = self.project_q(x).split([self.nope_dim, self.rope_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos.unsqueeze(-2), sin.unsqueeze(-2))
        latent, k_rope = self.project_latent(x, cos, sin)
        new = torch.cat((latent, k_rope), dim=-1)
        flat = new.view(B * S, -1) if step.select is None else new.view(B * S, -1)[step.select]
        kv.index_put_((step.rows, step.pos), flat.to(kv.dtype))
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

    def _forward_absorbed(self, x: torch.Tensor, kv: torch.Tensor, step: LatentStep) -> torch.Tensor:
        B, S, _ = x.shape
        H, dn, dr, r = self.n_heads, self.nope_dim, self.rope_dim, self.kv_lora_rank
        w = self.decode_weights()
        y = w.in_proj(x)
        if self.q_lora_rank is None:
            q_nope, rope_in, latent = y.split([H * dn, (H + 1) * dr, r], dim=-1)
        else:
            q_a, k_in, latent = y.split([self.q_lora_rank, dr, r], dim=-1)
            q_nope, q_rope_in = w.q_b(self.q_a_layernorm(q_a)).split([H * dn, H * dr], dim=-1)
            rope_in = torch.cat((q_rope_in, k_in), dim=-1)
        rope = rotate_halves(rope_in.reshape(B, S, H + 1, dr), *step.rope2)  # queries and the key at once
        new = torch.cat((self.kv_a_layernorm(latent), rope[:, :, H]), dim=-1)
        flat = new.view(B * S, -1) if step.select is None else new.view(B * S, -1)[step.select]
        kv.index_put_((step.rows, step.pos), flat.to(kv.dtype))
        # q' = W^UK_h^T q^C_h for every head at once: [H, B*S, d_n] @ [H, d_n, r] (spec 2.3)
        q_lat = torch.bmm(q_nope.reshape(B * S, H, dn).transpose(0, 1), w.w_uk)
        q = torch.cat((q_lat.transpose(0, 1).view(B, S, H, r), rope[:, :, :H]), dim=-1).view(B, 1, S * H, r + dr)
        cache = kv[:, None, : step.span].to(q.dtype)  # [B, 1, span, r + d_r]: one key shared by all heads
        # The value is the latent, i.e. the key's first r columns. Passing the whole key as the value keeps
        # q, k, v one width (PyTorch's fused CPU kernel needs that); the extra d_r output columns are dropped.
        o = F.scaled_dot_product_attention(q, cache, cache, attn_mask=step.mask, scale=self.scale)
        o = torch.bmm(o.view(B * S, H, r + dr)[..., :r].transpose(0, 1), w.w_uv)  # o_h = W^UV_h sum_s a_s c_s
        return w.o_proj(o.transpose(0, 1).reshape(B, S, H * self.v_dim))
