"""Rotary position embedding for MLA's decoupled key/query slice, with YaRN (docs/architecture.md §2).

The checkpoints rotate *adjacent* pairs (x0,x1), (x2,x3), ... `apply_rope` rotates those pairs and writes
the result as [rotated evens | rotated odds]. That permutation is harmless because queries and keys get the
same one, so every dot product (and every logit) is unchanged, and it avoids an interleaving copy
(docs/architecture.md §2.2). Anything that caches rotated keys (the engine) must therefore rotate queries
with this same function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanoseek.config import ModelConfig, yarn_mscale


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Per-pair inverse frequencies theta'_j (fp32, [d_r/2]); YaRN-blended when configured
    (docs/architecture.md §2.3)."""
    dim, base = config.qk_rope_head_dim, float(config.rope_theta)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv_freq = 1.0 / pos_freqs
    if config.rope_type != "yarn":
        return inv_freq
    rs = config.rope_scaling
    factor = float(rs["factor"])
    orig = rs["original_max_position_embeddings"]
    beta_fast, beta_slow = float(rs.get("beta_fast") or 32), float(rs.get("beta_slow") or 1)

    def correction_dim(n_rot: float) -> float:  # D(n) = d_r ln(L0 / (2 pi n)) / (2 ln b)
        return dim * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    extrapolation = 1 - ramp  # weight on the original (high-frequency) theta_j
    return (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation


def rope_attention_factor(config: ModelConfig) -> float:
    """Multiplier on cos/sin: m(s, mscale) / m(s, mscale_all_dim), 1.0 for every DeepSeek release
    (docs/architecture.md §2.4)."""
    if config.rope_type != "yarn":
        return 1.0
    rs = config.rope_scaling
    if rs.get("attention_factor") is not None:
        return float(rs["attention_factor"])
    factor = float(rs["factor"])
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return yarn_mscale(factor, 1.0)


def softmax_scale(config: ModelConfig) -> float:
    """tau = d_qk^-1/2 * m(s, mscale_all_dim)^2, with d_qk = d_nope + d_rope in both the expanded and the absorbed
    form (docs/architecture.md §2.4, §9.20)."""
    scale = config.qk_head_dim ** -0.5
    if config.rope_type == "yarn":
        mscale_all_dim = config.rope_scaling.get("mscale_all_dim", 0)
        if mscale_all_dim:
            m = yarn_mscale(float(config.rope_scaling["factor"]), mscale_all_dim)
            scale *= m * m
    return scale


class RotaryEmbedding(nn.Module):
    """Turns positions into the (cos, sin) pair every layer shares; holds no learned state."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.attention_factor = rope_attention_factor(config)
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def reset_parameters(self) -> None:
        """Recompute the buffer (after the model was built on the meta device and loaded with assign=True)."""
        self.inv_freq = rope_inv_freq(self.config).to(self.inv_freq.device if not self.inv_freq.is_meta else "cpu")

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] or [B, T] integer positions -> cos, sin of shape [..., T, d_r/2]. Angles in fp32."""
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the last dim of x ([..., T, (heads,) d_r]) by the per-position angles.

    cos/sin must broadcast against x[..., 0::2]; the output is laid out [rotated evens | rotated odds].
    """
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
