"""DeepSeekMoE (spec section 4): sigmoid router with a selection-only correction bias, group-limited top-k,
fine-grained routed experts plus shared experts, and the two balancing mechanisms.

Experts run grouped: token copies are sorted by expert once, then each expert that received tokens does one
matmul over its contiguous slice (on CUDA, one grouped GEMM for all). Experts with no tokens cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.layers import MLP, compute_dtype
from nanoseek.model.packed import PackedExperts, derived


def route(scores: torch.Tensor, bias: torch.Tensor, top_k: int, n_group: int, topk_group: int,
          norm_topk_prob: bool, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick experts for each token (spec 4.2).

    scores: [N, E] sigmoid affinities (fp32). bias: [E] correction bias, used only to choose.
    Returns (weights [N, K] fp32, indices [N, K]).
    """
    choice = scores + bias
    if n_group > 1 and topk_group < n_group:
        N, E = choice.shape
        grouped = choice.view(N, n_group, E // n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # top-2 sum per group (pitfall 6)
        keep = group_scores.topk(topk_group, dim=-1).indices
        group_mask = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
        # Excluded groups must be -inf, not 0: biases go negative during training (pitfall 7).
        choice = grouped.masked_fill(group_mask.unsqueeze(-1), float("-inf")).view(N, E)
    indices = choice.topk(top_k, dim=-1).indices
    weights = scores.gather(1, indices)  # unbiased scores mix the outputs (pitfall 5)
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling, indices


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, n_experts: int, top_k: int) -> torch.Tensor:
    """Complementary sequence-wise balance loss without alpha (spec 4.6), averaged over sequences.

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


def bias_update(bias: torch.Tensor, counts: torch.Tensor, gamma: float) -> None:
    """Aux-loss-free balancing step (spec 4.5): b_i += gamma * sign(mean(c) - c_i), in place, no autograd."""
    c = counts.to(torch.float32)
    bias.add_(gamma * torch.sign(c.mean() - c))


class Router(nn.Module):
    """`mlp.gate`: weight [E, d] and the fp32 buffer e_score_correction_bias [E].

    Both stay fp32 whatever dtype the model is cast to: a bf16 bias (values drift to a few units) has a
    resolution of ~0.02 and flips expert choices (pitfall 4); HF keeps both fp32 as well.
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
        with torch.autocast(x.device.type, enabled=False):
            scores = F.linear(x.float(), self.weight.float()).sigmoid()
        weights, indices = route(scores, self.e_score_correction_bias, self.top_k, self.n_group, self.topk_group,
                                 self.norm_topk_prob, self.scaling)
        return weights, indices, scores


class _GroupedSwiGLU(torch.autograd.Function):
    """SwiGLU experts over tokens already sorted by expert, forward and backward written out.

    Autograd over a per-expert loop of F.linear pays for a cat of the outputs, a split and a cat per expert
    in the backward, a stack of the weight gradients and a cast per expert slice (a quarter of a CPU MoE
    layer in the profile). Here every matmul writes straight into one preallocated buffer, the SwiGLU
    elementwise work runs once over all tokens, and weights are cast to the compute dtype once.
    """

    @staticmethod
    def forward(ctx, xs, w13, w2, sizes, dtype):
        I = w2.shape[-1]
        x, w13c, w2c = xs.to(dtype), w13.to(dtype), w2.to(dtype)
        h13 = _block_mm(x, w13c, sizes, transpose=True)
        act = F.silu(h13[:, :I]) * h13[:, I:]
        out = _block_mm(act, w2c, sizes, transpose=True)
        ctx.save_for_backward(x, h13, act, w13c, w2c)
        ctx.sizes, ctx.dtypes = sizes, (xs.dtype, w13.dtype, w2.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, h13, act, w13c, w2c = ctx.saved_tensors
        sizes, (x_dtype, w13_dtype, w2_dtype) = ctx.sizes, ctx.dtypes
        I = w2c.shape[-1]
        g = grad_out.to(x.dtype)
        grad_act = _block_mm(g, w2c, sizes, transpose=False)
        grad_w2 = _block_weight_grads(g, act, sizes, w2c)
        gate, up = h13[:, :I], h13[:, I:]
        grad_h13 = torch.empty_like(h13)
        torch.ops.aten.silu_backward(grad_act * up, gate, grad_input=grad_h13[:, :I])
        torch.mul(grad_act, F.silu(gate), out=grad_h13[:, I:])
        grad_x = _block_mm(grad_h13, w13c, sizes, transpose=False)
        grad_w13 = _block_weight_grads(grad_h13, x, sizes, w13c)
        return grad_x.to(x_dtype), grad_w13.to(w13_dtype), grad_w2.to(w2_dtype), None, None


def _blocks(sizes: list[int]):
    """(expert, its slice of rows) for every expert that has rows."""
    start = 0
    for e, n in enumerate(sizes):
        if n:
            yield e, slice(start, start + n)
            start += n


def _block_mm(a: torch.Tensor, w: torch.Tensor, sizes: list[int], transpose: bool) -> torch.Tensor:
    """out[rows of e] = a[rows of e] @ (w[e]^T if transpose else w[e]), into one preallocated buffer."""
    out = a.new_empty(a.shape[0], w.shape[1] if transpose else w.shape[2])
    for e, rows in _blocks(sizes):
        torch.mm(a[rows], w[e].t() if transpose else w[e], out=out[rows])
    return out


def _block_weight_grads(g: torch.Tensor, a: torch.Tensor, sizes: list[int], like: torch.Tensor) -> torch.Tensor:
    """grad[e] = g[rows of e]^T @ a[rows of e]; zero for experts without rows."""
    grad = torch.empty_like(like)
    for e, n in enumerate(sizes):
        if not n:
            grad[e].zero_()
    for e, rows in _blocks(sizes):
        torch.mm(g[rows].t(), a[rows], out=grad[e])
    return grad


def grouped_swiglu(xs: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, sizes: list[int],
                   dtype: torch.dtype) -> torch.Tensor:
    """Expert e applied to its contiguous block of sizes[e] rows of xs: down(silu(gate) * up), in dtype.
    w13 [E, 2I, d] (gate rows then up rows), w2 [E, d, I]."""
    with torch.autocast(xs.device.type, enabled=False):
        return _GroupedSwiGLU.apply(xs, w13, w2, sizes, dtype)


EXPERT_ROWS_MULTIPLE = 8


class Experts(nn.Module):
    """The routed SwiGLU experts as two stacked tensors (the HF v5 fused layout, spec 6.2):
    gate_up_proj [E, 2*I_m, d] (gate rows, then up rows) and down_proj [E, d, I_m]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, d, I = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.n_experts, self.inter = E, I
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, d))
        self.down_proj = nn.Parameter(torch.empty(E, d, I))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """x [N, d], weights/indices [N, K], counts [E] tokens per expert -> sum_k w_k FFN_{i_k}(x) [N, d] fp32."""
        N, K = indices.shape
        expert_of = indices.view(-1)
        order = expert_of.argsort(stable=True)  # token copies grouped by expert
        xc = x.to(compute_dtype(x))  # cast the N tokens, not their N*K copies
        # One grouped GEMM for all experts on CUDA inference. Not for training: its backward fails on the
        # CPU build here and is unverified on GPU, so gradients go through the per-expert path.
        if x.is_cuda and not torch.is_grad_enabled() and torch.bfloat16 in (xc.dtype, compute_dtype(x)):
            row_token, row_weight = order // K, weights.view(-1)[order]
            ys = self._grouped_gemm(xc[row_token].to(torch.bfloat16), counts)
        else:
            row_token, row_weight, sizes = self._padded_rows(order, expert_of[order], weights.view(-1)[order],
                                                             counts, K)
            ys = grouped_swiglu(xc[row_token], self.gate_up_proj, self.down_proj, sizes, xc.dtype)
        ys = ys * row_weight.unsqueeze(-1)  # fp32: routed outputs accumulate in fp32 (spec 4.4)
        return torch.zeros(N, x.shape[-1], device=x.device, dtype=ys.dtype).index_add_(0, row_token, ys)

    @staticmethod
    def _padded_rows(order: torch.Tensor, expert_sorted: torch.Tensor, weight_sorted: torch.Tensor,
                     counts: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Rows of the grouped buffer: which token each reads and its routing weight, with each expert's block
        padded to a multiple of EXPERT_ROWS_MULTIPLE rows. oneDNN (CPU bf16) builds a kernel per matmul shape
        and the token counts change every step; padded, the shapes repeat (an MoE layer's step: 22.8 vs 29.2
        ms steady, 25 vs 38 ms in the first steps, measured here). A padding row reads token 0 with weight 0:
        it adds nothing to the output and gets no gradient."""
        m = EXPERT_ROWS_MULTIPLE
        padded = (counts + m - 1) // m * m
        rank = torch.arange(order.numel(), device=order.device) - (counts.cumsum(0) - counts)[expert_sorted]
        slot = (padded.cumsum(0) - padded)[expert_sorted] + rank
        sizes = padded.tolist()
        total = sum(sizes)
        row_token = torch.zeros(total, dtype=order.dtype, device=order.device).index_put_((slot,), order // K)
        row_weight = weight_sorted.new_zeros(total).index_put((slot,), weight_sorted)
        return row_token, row_weight, sizes

    def _grouped_gemm(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        offs = counts.cumsum(0).to(torch.int32)
        w1 = self.gate_up_proj.to(torch.bfloat16).transpose(-2, -1)
        w2 = self.down_proj.to(torch.bfloat16).transpose(-2, -1)
        gate, up = F.grouped_mm(xs, w1, offs=offs).chunk(2, dim=-1)
        return F.grouped_mm(F.silu(gate) * up, w2, offs=offs)


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
            out = out + self.shared_experts(flat)  # input is the MoE input, not a residual (spec 4.2)
        loss = None
        if balance_loss:
            loss = sequence_balance_loss(scores.view(*shape[:-1], -1), indices.view(*shape[:-1], -1),
                                         self.n_experts, self.top_k)
        return out.to(x.dtype).view(shape), RoutingStats(counts, loss)

    def packed_experts(self) -> PackedExperts:
        return derived(self.experts, lambda: PackedExperts(self.experts.gate_up_proj, self.experts.down_proj))

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """Generation: no statistics or autograd, experts in the layout small matmuls prefer
        (nanoseek.model.packed). Routing is the training path's own (same choices, same weights). Eager: for
        one token the chosen experts run directly, for more the token copies are grouped by expert once.
        Under torch.compile, few tokens index the chosen experts' weights inside the compiled kernels
        (no host round trip, no gathered copies); many take the grouped path."""
        shape = x.shape
        d = shape[-1]
        flat = x.reshape(-1, d)
        weights, indices, _ = self.gate(flat)
        N, K = indices.shape
        if torch.compiler.is_compiling() and N * K <= 8 * self.n_experts:
            out = self._indexed_experts(flat, weights, indices)
        elif N == 1:
            experts = self.packed_experts()
            out = None
            for k, e in enumerate(indices[0].tolist()):
                y = experts(e, flat).float() * weights[:, k:k + 1]  # routed outputs accumulate in fp32 (spec 4.4)
                out = y if out is None else out + y
        else:
            experts = self.packed_experts()
            idx = indices.view(-1)
            order = idx.argsort(stable=True)
            token_of = order // K
            xs = flat[token_of]
            ys, start = [], 0
            for e, n in enumerate(torch.bincount(idx, minlength=self.n_experts).tolist()):
                if n:
                    ys.append(experts(e, xs[start:start + n]))
                    start += n
            ys = torch.cat(ys).float() * weights.view(-1)[order].unsqueeze(-1)
            out = torch.zeros(N, d, dtype=torch.float32, device=x.device).index_add_(0, token_of, ys)
        if self.shared_experts is not None:
            out = out + self.shared_experts.forward_inference(flat)
        return out.to(x.dtype).view(shape)

    def _indexed_experts(self, flat: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.experts.gate_up_proj[indices], self.experts.down_proj[indices]  # [N, K, 2I, d], [N, K, d, I]
        gate, up = torch.einsum("nkid,nd->nki", w1, flat.to(w1.dtype)).chunk(2, dim=-1)
        y = torch.einsum("nkdi,nki->nkd", w2, F.silu(gate) * up)
        return (y.float() * weights.unsqueeze(-1)).sum(1)
