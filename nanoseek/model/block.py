"""One pre-norm decoder layer: x + MLA(norm(x)), then + FFN(norm(.)), where FFN is dense or MoE (docs/architecture.md §4.1)."""

from __future__ import annotations

import torch
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.layers import MLP, RMSNorm
from nanoseek.model.mla import MLA
from nanoseek.model.moe import MoE, RoutingStats


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLA(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = MoE(config) if self.is_moe else MLP(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, balance_loss: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, RoutingStats | None]:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask)
        if self.is_moe:
            out, stats = self.mlp(self.post_attention_layernorm(x), balance_loss)
            return x + out, stats
        return x + self.mlp(self.post_attention_layernorm(x)), None
