"""The whole DeepSeek-V3 model: embeddings, decoder layers, final norm, output head, MTP modules.

Module names mirror Hugging Face's `DeepseekV3ForCausalLM` (`model.embed_tokens`, `model.layers.{i}...`,
`lm_head`) so a state dict maps onto the checkpoint layout with only two renames, done in `nanoseek.hf`:
routed experts (stacked here, one tensor per expert there) and MTP modules (`mtp.{k}` here,
`model.layers.{L+k}` there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.block import DecoderLayer
from nanoseek.model.layers import RMSNorm, compute_dtype
from nanoseek.model.loss import linear_cross_entropy
from nanoseek.model.mla import latent_step, rope_halves
from nanoseek.model.moe import Experts, Router, bias_update
from nanoseek.model.mtp import MTPModule
from nanoseek.model.packed import PackedLinear, derived
from nanoseek.model.rope import RotaryEmbedding



@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # [B, T, V]; None when targets were given without return_logits
    loss: torch.Tensor | None = None  # main + mtp_weight * mean(MTP) + aux_loss_alpha * balance
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
    def update_router_biases(self, counts: torch.Tensor, gamma: float) -> None:
        """Aux-loss-free balancing (spec 4.5): move each layer's correction bias by +-gamma towards balance.

        counts [n_routers, E]: tokens each expert received over the whole step (all micro-batches). Under
        torch.distributed the counts are summed across ranks first, so every rank applies the same update.
        """
        routers = self.routers()
        if counts.shape[0] != len(routers):
            raise ValueError(f"counts has {counts.shape[0]} rows but the model has {len(routers)} MoE routers")
        counts = counts.to(routers[0].e_score_correction_bias.device, torch.float32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            counts = counts.clone()
            dist.all_reduce(counts)
        for router, c in zip(routers, counts):
            bias_update(router.e_score_correction_bias, c, gamma)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *, return_stats: bool = False,
                mtp_weight: float = 0.3, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, return_logits: bool = False) -> torch.Tensor | ModelOutput:
        """input_ids [B, T] -> logits [B, T, V].

        With targets (next tokens, IGNORE_INDEX = -100 masks a position) or return_stats=True, returns a
        ModelOutput with the losses and routing statistics instead. MTP losses are computed when targets are
        given and the model has MTP modules; mtp_weight is lambda in L = L_main + lambda/D sum_k L_MTP^k.
        With targets the losses run through the output head chunk by chunk and ModelOutput.logits stays None
        (the full logits are the step's largest tensor); pass return_logits=True to get them as well.
        """
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor [batch, seq], got {tuple(input_ids.shape)} "
                             f"{input_ids.dtype}")
        B, T = input_ids.shape
        if targets is not None and targets.shape != input_ids.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal input_ids shape {(B, T)}")
        cfg = self.config
        h = self.model.embed_tokens(input_ids)
        if positions is None:
            positions = torch.arange(T, device=input_ids.device)
        cos, sin = self.rotary(positions, compute_dtype(h))
        want_balance = targets is not None and cfg.aux_loss_alpha > 0 and self.training
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
        if targets is not None:
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
                out.balance_loss = cfg.aux_loss_alpha * torch.stack([s.balance_loss for s in stats]).mean()
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

    # ---- generation with a latent cache -----------------------------------------------------------------
    def _rope(self, positions: torch.Tensor, dtype: torch.dtype, rope) -> tuple[torch.Tensor, torch.Tensor]:
        if rope is None:
            return self.rotary(positions, dtype)
        cos, sin = rope  # tables over all positions, computed once by the caller with self.rotary
        return cos[positions], sin[positions]

    @torch.no_grad()
    def forward_cached(self, input_ids: torch.Tensor, kv: list[torch.Tensor], positions: torch.Tensor, *,
                       valid: torch.Tensor | None = None, span: int | None = None, absorbed: bool | None = None,
                       rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One generation step over new tokens input_ids [B, S] at positions [B, S] with a latent cache.

        kv: one tensor [B, T_max, kv_lora_rank + qk_rope_head_dim] per decoder layer; the new tokens' entries
        are written in place, and the token at position p of row b attends to kv[b, 0..p] (entries before the
        new tokens must already hold that row's earlier tokens). valid [B, S] marks right padding (False: not
        stored). absorbed: None picks the absorbed path for short steps (decode), expanded for prefill.
        rope: optional (cos, sin) tables indexed by position. Returns the final-normed hidden [B, S, d];
        logits are self.lm_head of the rows the caller needs.
        """
        step = latent_step(positions, self.config.num_attention_heads, valid, span, absorbed)
        h = self.model.embed_tokens(input_ids)
        cos, sin = self._rope(positions, compute_dtype(h), rope)
        if step.absorbed:
            step.rope2 = tuple(t.unsqueeze(-2) for t in rope_halves(cos, sin))
        for layer, cache in zip(self.model.layers, kv):
            h = layer.forward_cached(h, cos, sin, cache, step)
        return self.model.norm(h)

    def logits_inference(self, h: torch.Tensor) -> torch.Tensor:
        """lm_head for generation, with the weight in the layout small matmuls prefer (model.packed)."""
        return self._packed_head()(h)

    def _packed_head(self) -> PackedLinear:
        return derived(self.lm_head, lambda: PackedLinear(self.lm_head.weight))

    def draft_logits_inference(self, h: torch.Tensor, n_vocab: int) -> torch.Tensor:
        """Logits over token ids [0, n_vocab) only: a speculative draft's cheaper output head. BPE assigns ids
        in merge order, so the low ids are the bytes and the most frequent merges (what drafts mostly get
        right); any draft distribution keeps the verified output exact, this one only costs a little
        acceptance for n_vocab / vocab_size of the head's work."""
        if n_vocab >= self.config.vocab_size:
            return self.logits_inference(h)
        head = derived(self.lm_head, lambda: PackedLinear(self.lm_head.weight.detach()[:n_vocab]),
                       tag=f"draft{n_vocab}")
        return head(h)

    @torch.no_grad()
    def prepare_inference(self) -> None:
        """Build or refresh every weight the generation path derives (model.packed) now. Required before
        running compiled generation code, which skips the staleness checks; cheap when nothing changed."""
        from nanoseek.model.layers import MLP
        from nanoseek.model.mla import MLA
        from nanoseek.model.moe import MoE

        for m in self.modules():
            if isinstance(m, MLA):
                m.decode_weights()
            elif isinstance(m, MoE):
                m.packed_experts()
            elif isinstance(m, MLP):
                m.packed()
        self._packed_head()

    @torch.no_grad()
    def forward_mtp_cached(self, depth: int, h_prev: torch.Tensor, next_ids: torch.Tensor, kv: torch.Tensor,
                           positions: torch.Tensor, *, valid: torch.Tensor | None = None, span: int | None = None,
                           rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """MTP module `depth` (1-based) over its own latent cache kv (spec 5.4): from the previous depth's
        hidden h_prev [B, S, d] at positions [B, S] (the main model's final-normed hidden for depth 1) and the
        tokens that follow them, next_ids [B, S]. Returns the shared_head-normed hidden: lm_head of it gives
        the draft logits for the token after next_ids, and it stands in for h_prev when drafting further."""
        module = self.mtp[depth - 1]
        step = latent_step(positions, self.config.num_attention_heads, valid, span)
        emb = self.model.embed_tokens(next_ids)
        cos, sin = self._rope(positions, compute_dtype(emb), rope)
        if step.absorbed:
            step.rope2 = tuple(t.unsqueeze(-2) for t in rope_halves(cos, sin))
        return module.shared_head.norm(module.forward_cached(h_prev, emb, cos, sin, kv, step))

