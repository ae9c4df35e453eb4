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
from nanoseek.model.loss import linear_cross_entropy, linear_logprobs
from nanoseek.model.moe import Experts, Router, bias_update
from nanoseek.model.mtp import MTPModule
from nanoseek.model.rope import RotaryEmbedding



@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # [B, T, V]; None when targets were given without return_logits
    loss: torch.Tensor | None = None  # main + mtp_weight * mean(MTP) + alpha * balance
    main_loss: torch.Tensor | None = None  # next-token cross-entropy
    mtp_losses: list[torch.Tensor] = field(default_factory=list)  # one per MTP depth k (targets t_{i+k+1})
    balance_loss: torch.Tensor | None = None  # sequence-wise balance loss, alpha applied, mean over MoE layers
    expert_counts: torch.Tensor | None = None  # [n_routers, E] tokens per expert (main MoE layers, then MTP)
    hidden: torch.Tensor | None = None  # final-normed hidden state [B, T, d] (input of lm_head and of MTP 1)
    token_logprobs: torch.Tensor | None = None  # [B, T] log p(target) per position (logprobs=True)
    token_entropy: torch.Tensor | None = None  # [B, T] entropy of the next-token distribution (logprobs=True)


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
    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *, return_stats: bool = False,
                mtp_weight: float = 0.3, aux_loss_alpha: float | None = None, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, return_logits: bool = False, logprobs: bool = False,
                temperature: float = 1.0) -> torch.Tensor | ModelOutput:
        """input_ids [B, T] -> logits [B, T, V].

        With targets (next tokens, IGNORE_INDEX = -100 masks a position) or return_stats=True, returns a
        ModelOutput with the losses and routing statistics instead. MTP losses are computed when targets are
        given and the model has MTP modules; mtp_weight is lambda in L = L_main + lambda/D sum_k L_MTP^k.
        aux_loss_alpha weights the sequence-wise balance loss (computed in training mode only; default: the
        config's aux_loss_alpha, the hub field; the training loop passes its own setting).
        With targets the losses run through the output head chunk by chunk and ModelOutput.logits stays None
        (the full logits are the step's largest tensor); pass return_logits=True to get them as well.
        logprobs=True (with targets) returns per-token log-probabilities of the targets and the entropies
        instead of the losses (RL's policy gradient is a function of them), also chunked through the head,
        with the routing statistics; MTP modules are not run. temperature: of the distribution they are
        taken from (logits / temperature, as a sampler at that temperature draws from).
        """
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor [batch, seq], got {tuple(input_ids.shape)} "
                             f"{input_ids.dtype}")
        B, T = input_ids.shape
        if logprobs and targets is None:
            raise ValueError("logprobs=True needs targets: the tokens whose log-probabilities to compute")
        if targets is not None and targets.shape != input_ids.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal input_ids shape {(B, T)}")
        cfg = self.config
        h = self.model.embed_tokens(input_ids)
        if positions is None:
            positions = torch.arange(T, device=input_ids.device)
        cos, sin = self.rotary(positions, compute_dtype(h))
        alpha = cfg.aux_loss_alpha if aux_loss_alpha is None else aux_loss_alpha
        want_balance = targets is not None and alpha > 0 and self.training
        stats = []
        for layer in self.model.layers:
            h, s = layer(h, cos, sin, want_balance, attn_mask)
            if s is not None:
                stats.append(s)
        h = self.model.norm(h)
        logits = self.lm_head(h) if targets is None or return_logits else None
        if targets is None and not return_stats:
            return logits

        out = ModelOutput(logits=logits, hidden=h)
        if logprobs:
            scaled = h if temperature == 1.0 else h / temperature  # (h / t) W^T = logits / t
            out.token_logprobs, out.token_entropy = linear_logprobs(scaled, self.lm_head.weight, targets,
                                                                    compute_dtype(h))
            if want_balance and stats:
                out.balance_loss = alpha * torch.stack([s.balance_loss for s in stats]).mean()
        elif targets is not None:
            out.main_loss = self._head_loss(h, targets)
            h_k = h
            for k, module in enumerate(self.mtp, start=1):
                n = T - k  # depth k sees positions 0..T-k-1 and the embeddings of tokens k..T-1
                if n < 1:
                    break
                mask_k = attn_mask[..., :n, :n] if attn_mask is not None else None
                h_k, s = module(h_k[:, :n], self.model.embed_tokens(input_ids[:, k:]), cos[..., :n, :],
                                sin[..., :n, :], want_balance, mask_k)
                stats.append(s)
                out.mtp_losses.append(self._head_loss(module.shared_head.norm(h_k), targets[:, k:]))
            loss = out.main_loss
            if out.mtp_losses:
                loss = loss + mtp_weight / len(self.mtp) * torch.stack(out.mtp_losses).sum()
            if want_balance and stats:
                out.balance_loss = alpha * torch.stack([s.balance_loss for s in stats]).mean()
                loss = loss + out.balance_loss
            out.loss = loss
        if stats:
            E = cfg.n_routed_experts
            # pad in case the MTP modules were skipped (sequence too short): rows stay aligned with routers()
            rows = [s.counts for s in stats] + [torch.zeros(E, dtype=torch.int64, device=h.device)] * (
                self.n_routers - len(stats))
            out.expert_counts = torch.stack(rows)
        return out

    def _head_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(h, self.lm_head.weight, targets, compute_dtype(h))
