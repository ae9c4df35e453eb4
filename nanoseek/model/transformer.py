"""The whole DeepSeek-V3 model: embeddings, decoder layers, final norm, output head, MTP modules.

Module names mirror Hugging Face's `DeepseekV3ForCausalLM` (`model.embed_tokens`, `model.layers.{i}...`,
`lm_head`) so a state dict maps onto the checkpoint layout with only two renames, done in `nanoseek.hf`:
routed experts (stacked here, one tensor per expert there) and MTP modules (`mtp.{k}` here,
`model.layers.{L+k}` there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.block import DecoderLayer
from nanoseek.model.layers import RMSNorm, compute_dtype
from nanoseek.model.loss import linear_cross_entropy
from nanoseek.model.moe import Experts, Router, bias_update
from nanoseek.model.mtp import MTPModule
from nanoseek.model.rope import RotaryEmbedding


@dataclass
class ModelOutput:
    loss: torch.Tensor | None = None  # main + mtp_weight * mean(MTP) + alpha * balance
    main_loss: torch.Tensor | None = None  # next-token cross-entropy
    mtp_losses: list[torch.Tensor] = field(default_factory=list)  # one per MTP depth k (targets t_{i+k+1})
    balance_loss: torch.Tensor | None = None  # sequence-wise balance loss, alpha applied, mean over MoE layers
    expert_counts: torch.Tensor | None = None  # [n_routers, E] tokens per expert (main MoE layers, then MTP)
    hidden: torch.Tensor | None = None  # final-normed hidden state [B, T, d] (input of lm_head and of MTP 1)


class Backbone(nn.Module):
    """The `model.` prefix of the checkpoint."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DeepSeekV3(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.mtp = nn.ModuleList(MTPModule(config, k) for k in range(1, config.num_nextn_predict_layers + 1))
        self.rotary = RotaryEmbedding(config)
        self.n_routers = sum(layer.is_moe for layer in self.model.layers) + len(self.mtp)
        # Training settings, not architecture: the training loop sets them from its own config (they are not
        # saved with the weights). lambda of the MTP loss, and alpha of the balance loss (default: the hub field).
        self.mtp_weight = 0.3
        self.aux_loss_alpha = config.aux_loss_alpha
        if not self.lm_head.weight.is_meta:
            self.init_weights()

    # ---- weights --------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, std: float | None = None) -> None:
        """Normal(0, initializer_range) for every matrix, ones for norms, zeros for biases."""
        std = self.config.initializer_range if std is None else std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, Experts):
                nn.init.normal_(m.gate_up_proj, std=std)
                nn.init.normal_(m.down_proj, std=std)
            elif isinstance(m, Router):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.e_score_correction_bias)

    def routers(self) -> list[Router]:
        """Every MoE router, main layers first then MTP modules: the row order of expert_counts."""
        return [m for m in self.modules() if isinstance(m, Router)]

    @torch.no_grad()
    def update_router_biases(self, counts: torch.Tensor, gamma: float, rule: str = "sign") -> None:
        """Aux-loss-free balancing (docs/architecture.md §4.5): move each layer's correction bias by +-gamma towards balance.

        counts [n_routers, E]: tokens each expert received over the whole step: all micro-batches and, under
        data parallelism, all ranks (the training loop sums them first, so every rank applies the same update).
        """
        routers = self.routers()
        if counts.shape[0] != len(routers):
            raise ValueError(f"counts has {counts.shape[0]} rows but the model has {len(routers)} MoE routers")
        counts = counts.to(routers[0].e_score_correction_bias.device, torch.float32)
        for router, c in zip(routers, counts):
            bias_update(router.e_score_correction_bias, c, gamma, rule)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor | ModelOutput:
        """ids [B, T] -> logits [B, T, V].

        With targets (next tokens, IGNORE_INDEX = -100 masks a position), returns a ModelOutput with the losses
        and routing statistics instead: L = L_main + mtp_weight/D sum_k L_MTP^k + the balance loss (training mode
        only, weighted by aux_loss_alpha; both are attributes the training loop sets). The losses run through the
        output head chunk by chunk, so the full logits (the step's largest tensor) are never formed.
        attn_mask [B, 1, T, T] (bool, True = may attend) replaces the causal mask: packed rows of SFT.
        """
        if targets is None:
            h, _, _, _ = self._trunk(ids, attn_mask, balance=False)
            return self.lm_head(h)
        if targets.shape != ids.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal ids shape {tuple(ids.shape)}")
        want_balance = self._wants_balance()
        h, cos, sin, stats = self._trunk(ids, attn_mask, want_balance)
        T = ids.shape[1]
        out = ModelOutput(hidden=h, main_loss=self._head_loss(h, targets))
        h_k = h
        for k, module in enumerate(self.mtp, start=1):
            n = T - k  # depth k sees positions 0..T-k-1 and the embeddings of tokens k..T-1
            if n < 1:
                break
            mask_k = attn_mask[..., :n, :n] if attn_mask is not None else None
            h_k, s = module(h_k[:, :n], self.model.embed_tokens(ids[:, k:]), cos[..., :n, :], sin[..., :n, :],
                            want_balance, mask_k)
            stats.append(s)
            out.mtp_losses.append(self._head_loss(module.shared_head.norm(h_k), targets[:, k:]))
        loss = out.main_loss
        if out.mtp_losses:
            loss = loss + self.mtp_weight / len(self.mtp) * torch.stack(out.mtp_losses).sum()
        self._add_stats(out, stats, want_balance)
        if out.balance_loss is not None:
            loss = loss + out.balance_loss
        out.loss = loss
        return out

    def hidden_states(self, ids: torch.Tensor, attn_mask: torch.Tensor | None = None) -> ModelOutput:
        """The final-normed hidden states [B, T, d] (the output head's input) with the routing statistics, and in
        training mode the balance loss; the MTP modules are not run. A caller that needs a function of the
        output head other than the next-token loss (RL's per-token log-probabilities) applies it to .hidden."""
        want_balance = self._wants_balance()
        h, _, _, stats = self._trunk(ids, attn_mask, want_balance)
        out = ModelOutput(hidden=h)
        self._add_stats(out, stats, want_balance)
        return out

    def _wants_balance(self) -> bool:
        return self.training and self.aux_loss_alpha > 0

    def _trunk(self, ids: torch.Tensor, attn_mask: torch.Tensor | None, balance: bool):
        """Embeddings, decoder layers, final norm: (h, rope cos, rope sin, the MoE layers' routing stats)."""
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be an integer tensor [batch, seq], got {tuple(ids.shape)} {ids.dtype}")
        h = self.model.embed_tokens(ids)
        cos, sin = self.rotary(torch.arange(ids.shape[1], device=ids.device), compute_dtype(h))
        stats = []
        for layer in self.model.layers:
            h, s = layer(h, cos, sin, balance, attn_mask)
            if s is not None:
                stats.append(s)
        return self.model.norm(h), cos, sin, stats

    def _add_stats(self, out: ModelOutput, stats: list, balance: bool) -> None:
        if not stats:
            return
        if balance:
            out.balance_loss = self.aux_loss_alpha * torch.stack([s.balance_loss for s in stats]).mean()
        # pad in case the MTP modules were skipped (sequence too short, or hidden_states): rows stay aligned
        # with routers()
        E = self.config.n_routed_experts
        rows = [s.counts for s in stats] + [torch.zeros(E, dtype=torch.int64, device=out.hidden.device)] * (
            self.n_routers - len(stats))
        out.expert_counts = torch.stack(rows)

    def _head_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(h, self.lm_head.weight, targets, compute_dtype(h))
