"""Multi-token prediction modules (docs/architecture.md §5).

Module k predicts token t_{i+k+1} from the previous depth's hidden state at i and the embedding of
t_{i+k}: h' = eh_proj([enorm(emb) ; hnorm(h)]) (embedding FIRST, as the released weights are laid out),
then one full MoE decoder layer, then shared_head.norm and the model's shared output head.
"""

from __future__ import annotations

import torch
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.block import DecoderLayer
from nanoseek.model.layers import RMSNorm
from nanoseek.model.moe import RoutingStats


class SharedHead(nn.Module):
    """Holds only the norm: the output head itself is the main model's lm_head (docs/architecture.md §5.1)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPModule(DecoderLayer):
    def __init__(self, config: ModelConfig, depth: int):
        # Stored in checkpoints as decoder layer num_hidden_layers + depth - 1 (docs/architecture.md §5.3), always MoE.
        super().__init__(config, config.num_hidden_layers + depth - 1)
        d = config.hidden_size
        self.enorm = RMSNorm(d, config.rms_norm_eps)
        self.hnorm = RMSNorm(d, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.shared_head = SharedHead(config)

    def combine(self, h_prev: torch.Tensor, emb_next: torch.Tensor) -> torch.Tensor:
        """h' = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h_prev)]): the decoder layer's input at depth k."""
        return self.eh_proj(torch.cat((self.enorm(emb_next), self.hnorm(h_prev)), dim=-1))

    def forward(self, h_prev: torch.Tensor, emb_next: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                balance_loss: bool = False, attn_mask: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, RoutingStats | None]:
        """h_prev [B, T, d] (depth k-1 hidden, final-normed for k=1), emb_next [B, T, d] = Emb(t_{i+k}).
        Returns this depth's hidden [B, T, d] (before shared_head.norm) and its routing stats."""
        return super().forward(self.combine(h_prev, emb_next), cos, sin, balance_loss, attn_mask)
