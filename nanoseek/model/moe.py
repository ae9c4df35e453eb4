"""DeepSeekMoE (docs/architecture.md §4): sigmoid router with a selection-only correction bias, group-limited top-k,
fine-grained routed experts plus shared experts, and the two balancing mechanisms.

What the routed experts compute is defined here (Experts); how it is computed fast in each situation
(training, evaluation, generation on CPU or CUDA, under torch.compile) is nanoseek.model.experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.experts import experts
from nanoseek.model.layers import MLP, autocast_off


def route(scores: torch.Tensor, bias: torch.Tensor, top_k: int, n_group: int, topk_group: int,
          norm_topk_prob: bool, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick experts for each token (docs/architecture.md §4.2).

    scores: [N, E] sigmoid affinities (fp32). bias: [E] correction bias, used only to choose.
    Returns (weights [N, K] fp32, indices [N, K]).
    """
    choice = scores + bias
    if n_group > 1 and topk_group < n_group:
        N, E = choice.shape
        grouped = choice.view(N, n_group, E // n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # top-2 sum per group (docs/architecture.md §9.6)
        keep = group_scores.topk(topk_group, dim=-1).indices
        group_mask = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
        # Excluded groups must be -inf, not 0: biases go negative during training (docs/architecture.md §9.7).
        choice = grouped.masked_fill(group_mask.unsqueeze(-1), float("-inf")).view(N, E)
    indices = choice.topk(top_k, dim=-1).indices
    weights = scores.gather(1, indices)  # unbiased scores mix the outputs (docs/architecture.md §9.5)
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling, indices


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, n_experts: int, top_k: int) -> torch.Tensor:
    """Complementary sequence-wise balance loss without alpha (docs/architecture.md §4.6), averaged over sequences.

    scores [B, T, E] sigmoid affinities, indices [B, T, K]. Gradient flows only through P_i.
    sum_i f_i P_i equals 1 for perfectly uniform routing and grows as load concentrates.
    """
    B, T, _ = scores.shape
    probs = scores / scores.sum(-1, keepdim=True)
    P = probs.mean(1)  # [B, E]
    ones = torch.ones(B, T * top_k, device=scores.device, dtype=scores.dtype)
    f = torch.zeros(B, n_experts, device=scores.device, dtype=scores.dtype).scatter_add_(
        1, indices.reshape(B, T * top_k), ones) * (n_experts / (top_k * T))
    return (f * P).sum(-1).mean()


BIAS_RULES = ("sign", "proportional")
STARVED = 0.25  # an expert is starved in a step when its load is under this fraction of the fair share


def load_stats(counts: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per row of counts [layers, E]: MaxVio (max load / mean load - 1, Wang et al. 2024; 0 is perfect balance)
    and the share of experts starved (under STARVED of the mean load)."""
    c = counts.to(torch.float32)
    mean = c.mean(dim=1, keepdim=True).clamp_min(1e-9)
    maxvio = c.max(dim=1).values / mean.squeeze(1) - 1.0
    return maxvio.tolist(), (c < STARVED * mean).float().mean(dim=1).tolist()


def bias_update(bias: torch.Tensor, counts: torch.Tensor, gamma: float, rule: str = "sign") -> None:
    """Aux-loss-free balancing step (docs/architecture.md §4.5), in place, no autograd.

    sign (DeepSeek-V3):  b_i += gamma * sign(mean(c) - c_i)
    proportional:        b_i += gamma * (mean(c) - c_i) / mean(c), a step as large as the expert's relative load
                         error: far from balance it moves many gamma-steps at once, near balance it barely moves.
    """
    c = counts.to(torch.float32)
    mean = c.mean()
    if rule == "sign":
        bias.add_(gamma * torch.sign(mean - c))
    elif rule == "proportional":
        bias.add_(gamma * (mean - c) / mean.clamp_min(1e-9))
    else:
        raise ValueError(f"unknown bias update rule {rule!r}; choose one of {', '.join(BIAS_RULES)}")


class Router(nn.Module):
    """`mlp.gate`: weight [E, d] and the fp32 buffer e_score_correction_bias [E].

    Both stay fp32 whatever dtype the model is cast to: a bf16 bias (values drift to a few units) has a
    resolution of ~0.02 and flips expert choices (docs/architecture.md §9.4); HF keeps both fp32 as well.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        E = config.n_routed_experts
        self.top_k, self.n_group, self.topk_group = config.num_experts_per_tok, config.n_group, config.topk_group
        self.norm_topk_prob, self.scaling = config.norm_topk_prob, config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(E, config.hidden_size, dtype=torch.float32))
        self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=torch.float32))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in ("weight", "e_score_correction_bias"):
            t = getattr(self, name)
            if t.is_floating_point() and t.dtype != torch.float32:
                t.data = t.data.float()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, d] -> (weights [N, K] fp32, indices [N, K], scores [N, E] fp32). Logits in fp32."""
        with autocast_off(x):
            scores = F.linear(x.float(), self.weight.float()).sigmoid()
        weights, indices = route(scores, self.e_score_correction_bias, self.top_k, self.n_group, self.topk_group,
                                 self.norm_topk_prob, self.scaling)
        return weights, indices, scores


class Experts(nn.Module):
    """The routed SwiGLU experts as two stacked tensors (the HF v5 fused layout, docs/architecture.md §6.2):
    gate_up_proj [E, 2*I_m, d] (gate rows, then up rows) and down_proj [E, d, I_m]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, d, I = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.n_experts, self.inter = E, I
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, d))
        self.down_proj = nn.Parameter(torch.empty(E, d, I))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                counts: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, d], weights/indices [N, K], counts [E] tokens per expert -> sum_k w_k FFN_{i_k}(x) [N, d] fp32."""
        return experts(x, weights, indices, self.gate_up_proj, self.down_proj, counts=counts)


@dataclass
class RoutingStats:
    counts: torch.Tensor  # [E] tokens routed to each expert this forward (int64)
    balance_loss: torch.Tensor | None  # sequence-wise balance loss (without alpha), when asked for


class MoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k = config.n_routed_experts, config.num_experts_per_tok
        self.gate = Router(config)
        self.experts = Experts(config)
        shared = config.n_shared_experts * config.moe_intermediate_size
        self.shared_experts = MLP(config.hidden_size, shared) if shared > 0 else None

    def forward(self, x: torch.Tensor, balance_loss: bool = False) -> tuple[torch.Tensor, RoutingStats]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, indices, scores = self.gate(flat)
        counts = torch.bincount(indices.view(-1), minlength=self.n_experts)
        out = self.experts(flat, weights, indices, counts)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)  # input is the MoE input, not a residual (docs/architecture.md §4.2)
        loss = None
        if balance_loss:
            loss = sequence_balance_loss(scores.view(*shape[:-1], -1), indices.view(*shape[:-1], -1),
                                         self.n_experts, self.top_k)
        return out.to(x.dtype).view(shape), RoutingStats(counts, loss)
