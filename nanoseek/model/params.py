"""Parameter counts: total, active per token, embedding vs non-embedding, MTP apart."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nanoseek.config import ModelConfig
from nanoseek.model.transformer import DeepSeekV3


@dataclass(frozen=True)
class ParamCounts:
    total: int  # main model (embeddings, layers, head), MTP excluded, tied weights counted once
    active: int  # per token: total minus the routed experts a token does not use
    embedding: int  # input embedding table (plus the output head when untied)
    mtp: int  # MTP modules (their embedding and head are shared, so not counted again)
    mtp_active: int

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def active_non_embedding(self) -> int:
        return self.active - self.embedding


def count_params(config: ModelConfig) -> ParamCounts:
    """Exact counts from the module tree, built on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = DeepSeekV3(config)
    seen: set[int] = set()
    total = mtp = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.startswith("mtp."):
            mtp += p.numel()
        else:
            total += p.numel()
    d, V = config.hidden_size, config.vocab_size
    embedding = V * d * (1 if config.tie_word_embeddings else 2)
    per_expert = 3 * d * config.moe_intermediate_size
    idle = (config.n_routed_experts - config.num_experts_per_tok) * per_expert
    active = total - config.num_moe_layers * idle if config.n_routed_experts else total
    mtp_active = mtp - config.num_nextn_predict_layers * idle
    return ParamCounts(total=total, active=active, embedding=embedding, mtp=mtp, mtp_active=mtp_active)
