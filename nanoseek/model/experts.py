"""Routed experts: what they compute, and the implementations that compute it fast in each situation.

Every implementation returns the same thing, out[t] = sum_k w[t, k] * FFN_{i[t, k]}(x[t]) in fp32 (routed
outputs accumulate in fp32, docs/architecture.md §4.4), where FFN_e(u) = down_e(silu(gate_e(u)) * up_e(u))
and the stacked weights are gate_up [E, 2I, d] (gate rows, then up rows) and down [E, d, I].

`experts(...)` is the one entry; `choose(...)` picks the implementation, in this one place:

    situation                                              implementation
    gradients needed (training)                            grouped     (one sort, hand-written backward)
    the model's own forward without gradients (eval)       grouped, or grouped_mm on CUDA in bf16
    generation on CUDA in bf16 (prefill, decode, verify)   grouped_mm  (one grouped GEMM, no host sync)
    generation inside torch.compile, few token copies      indexed     (gathered weights, no host sync)
    generation, one token                                  one_token   (its k experts, packed weights)
    generation, many tokens                                sorted      (per-expert loop, packed weights)

`reference` is the definition written plainly (a loop over experts with autograd); the tests hold every
other implementation equal to it, in values and, for `grouped`, in gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanoseek.model.layers import autocast_off, compute_dtype
from nanoseek.model.packed import PackedExperts

# oneDNN (CPU bf16) builds a kernel per matmul shape, and expert token counts change every step: padding each
# expert's block of rows to a multiple of 8 makes the shapes repeat (an MoE layer's training step measured
# 22.8 vs 29.2 ms steady, 25 vs 38 ms in the first steps).
EXPERT_ROWS_MULTIPLE = 8


def experts(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, gate_up: torch.Tensor,
            down: torch.Tensor, *, counts: torch.Tensor | None = None, packed: PackedExperts | None = None,
            impl: str | None = None) -> torch.Tensor:
    """x [N, d], weights/indices [N, K] (fp32 routing weights, expert ids) -> [N, d] fp32.

    counts [E]: tokens per expert (computed when not given). packed: the generation path's copies of the
    weights (nanoseek.model.packed); given, the generation implementations may be chosen. impl: force one of
    IMPLEMENTATIONS (tests, benchmarks)."""
    impl = impl or choose(x, indices, gate_up, packed)
    if counts is None and impl in ("grouped", "grouped_mm", "sorted"):
        counts = torch.bincount(indices.view(-1), minlength=gate_up.shape[0])
    return IMPLEMENTATIONS[impl](x, weights, indices, gate_up, down, counts=counts, packed=packed)


def choose(x: torch.Tensor, indices: torch.Tensor, gate_up: torch.Tensor, packed: PackedExperts | None) -> str:
    """The implementation for this call (see the module docstring's table)."""
    if torch.is_grad_enabled() and (x.requires_grad or gate_up.requires_grad):
        return "grouped"
    # F.grouped_mm needs 16-byte aligned strides: bf16 rows of a multiple of 8 values
    cuda_bf16 = (x.is_cuda and torch.bfloat16 in (x.dtype, compute_dtype(x))
                 and gate_up.shape[1] % 8 == 0 and gate_up.shape[2] % 8 == 0)
    if packed is None:
        return "grouped_mm" if cuda_bf16 else "grouped"
    n_copies, n_experts = indices.numel(), gate_up.shape[0]
    if torch.compiler.is_compiling() and n_copies <= 8 * n_experts:
        return "indexed"
    if cuda_bf16:
        return "grouped_mm"
    return "one_token" if indices.shape[0] == 1 else "sorted"


# ---- the definition --------------------------------------------------------------------------------------
def reference(x, weights, indices, gate_up, down, **_) -> torch.Tensor:
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    for e in indices.unique().tolist():
        token, k = (indices == e).nonzero(as_tuple=True)
        gate, up = F.linear(x[token], gate_up[e]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, down[e])
        out = out.index_add(0, token, y.float() * weights[token, k].unsqueeze(-1))
    return out


# ---- training: grouped rows with a hand-written backward ---------------------------------------------------
def grouped(x, weights, indices, gate_up, down, *, counts, **_) -> torch.Tensor:
    """Token copies sorted by expert once, each expert's block padded to EXPERT_ROWS_MULTIPLE rows, all blocks
    multiplied by one grouped GEMM (or one matmul per expert that has rows; idle experts cost nothing)."""
    N, K = indices.shape
    expert_of = indices.view(-1)
    order = expert_of.argsort(stable=True)  # token copies grouped by expert
    row_token, row_weight, padded = _padded_rows(order, expert_of[order], weights.view(-1)[order], counts, K)
    dtype = compute_dtype(x)
    groups = _Groups(padded, x.device)
    with autocast_off(x):
        return _RoutedSwiGLU.apply(x, row_token, row_weight, gate_up, down, groups, dtype)


def _padded_rows(order: torch.Tensor, expert_sorted: torch.Tensor, weight_sorted: torch.Tensor,
                 counts: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of the grouped buffer: which token each reads and its routing weight, each expert's block padded
    to a multiple of EXPERT_ROWS_MULTIPLE. A padding row reads token 0 with weight 0: it adds nothing to the
    output and gets no gradient. Returns (row_token, row_weight, rows per expert after padding)."""
    m = EXPERT_ROWS_MULTIPLE
    padded = (counts + m - 1) // m * m
    rank = torch.arange(order.numel(), device=order.device) - (counts.cumsum(0) - counts)[expert_sorted]
    slot = (padded.cumsum(0) - padded)[expert_sorted] + rank
    total = int(padded.sum())
    row_token = torch.zeros(total, dtype=order.dtype, device=order.device).index_put_((slot,), order // K)
    row_weight = weight_sorted.new_zeros(total).index_put((slot,), weight_sorted)
    return row_token, row_weight, padded


class _RoutedSwiGLU(torch.autograd.Function):
    """out [N, d] fp32 = sum over rows r of row_weight[r] * FFN_{expert of r}(x[row_token[r]]), rows grouped by
    expert (groups), forward and backward written out.

    Autograd over the same steps pays for a gather whose backward is a serial accumulating index_put, an fp32
    copy of every weighted row and its backward, and, with a per-expert loop of F.linear, a cat of the outputs,
    a split and a cat per expert in the backward, a stack of the weight gradients and a cast per expert slice
    (a quarter of a CPU MoE layer in the profile). Here the tokens are cast to the compute dtype once (N rows,
    not their N*K copies) and gathered with index_select (backward: index_add_), every matmul writes straight
    into one preallocated buffer, the SwiGLU elementwise work runs once over all rows, the routing weights are
    applied where the rows go back to their tokens, and the weights are cast to the compute dtype once.
    """

    @staticmethod
    def forward(ctx, x, row_token, row_weight, w13, w2, groups, dtype):
        I = w2.shape[-1]
        xs = x.to(dtype).index_select(0, row_token)
        w13c, w2c = w13.to(dtype), w2.to(dtype)
        h13 = _block_mm(xs, w13c, groups, transpose=True)
        gate_act = F.silu(h13[:, :I])
        act = gate_act * h13[:, I:]
        ys = _block_mm(act, w2c, groups, transpose=True)
        weighted = torch.mul(ys, row_weight.unsqueeze(-1), out=x.new_empty(ys.shape, dtype=torch.float32))
        out = weighted.new_zeros(x.shape[0], x.shape[1]).index_add_(0, row_token, weighted)
        ctx.save_for_backward(row_token, row_weight, xs, h13, gate_act, act,
                              ys if ctx.needs_input_grad[2] else None, w13c, w2c)
        ctx.groups, ctx.dtypes, ctx.n_tokens = groups, (x.dtype, w13.dtype, w2.dtype), x.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        row_token, row_weight, xs, h13, gate_act, act, ys, w13c, w2c = ctx.saved_tensors
        groups, (x_dtype, w13_dtype, w2_dtype) = ctx.groups, ctx.dtypes
        I = w2c.shape[-1]
        grad_rows = grad_out.index_select(0, row_token)  # fp32, as the output was summed
        grad_weight = (grad_rows * ys).sum(-1) if ys is not None else None  # d out / d w_r = FFN(x_r)
        g = torch.mul(grad_rows, row_weight.unsqueeze(-1), out=torch.empty_like(xs))  # rounded once, to the compute dtype
        grad_act = _block_mm(g, w2c, groups, transpose=False)
        grad_w2 = _block_weight_grads(g, act, groups, w2c)
        gate, up = h13[:, :I], h13[:, I:]
        grad_h13 = torch.empty_like(h13)
        torch.ops.aten.silu_backward(grad_act * up, gate, grad_input=grad_h13[:, :I])
        torch.mul(grad_act, gate_act, out=grad_h13[:, I:])
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_xs = _block_mm(grad_h13, w13c, groups, transpose=False)
            grad_x = grad_xs.new_zeros(ctx.n_tokens, xs.shape[1]).index_add_(0, row_token, grad_xs).to(x_dtype)
        grad_w13 = _block_weight_grads(grad_h13, xs, groups, w13c)
        return grad_x, None, grad_weight, grad_w13.to(w13_dtype), grad_w2.to(w2_dtype), None, None


class _Groups:
    """The grouped buffer's blocks: rows per expert (padded), as offsets for one grouped GEMM or as slices for
    a loop of matmuls.

    F.grouped_mm multiplies every expert's block in one call (no Python loop, no per-call overhead; ~10%
    faster than the loop on a 2-core CPU at cpu-small's shapes) and, given two 2-D operands, computes every
    expert's weight gradient at once. On CPUs it runs in every float dtype (use_grouped_mm says where it is
    used)."""

    def __init__(self, padded: torch.Tensor, device: torch.device):
        self.grouped_mm = use_grouped_mm(device)
        self.offs = padded.cumsum(0).to(torch.int32) if self.grouped_mm else None
        self.sizes = None if self.grouped_mm else padded.tolist()

    def blocks(self):
        """(expert, its slice of rows) for every expert that has rows."""
        start = 0
        for e, n in enumerate(self.sizes):
            if n:
                yield e, slice(start, start + n)
                start += n


def use_grouped_mm(device: torch.device) -> bool:
    """Whether the training implementation's matmuls run as grouped GEMMs (else a loop over experts).

    CPUs only, for now: CUDA's grouped_mm takes bf16 with 16-byte aligned widths and its use for the weight
    gradients (two 2-D operands) has not been run on a GPU yet, so CUDA training keeps the loop (measured on
    an H200) until a GPU run of tests/test_experts.py's CUDA tests says otherwise."""
    # under torch.compile the loop: the compiler's shape rules for grouped_mm take bf16 only, and the CPU
    # grouped_mm inside a compiled training graph is untested
    return device.type == "cpu" and not torch.compiler.is_compiling()


def _block_mm(a: torch.Tensor, w: torch.Tensor, groups: _Groups, transpose: bool) -> torch.Tensor:
    """out[rows of e] = a[rows of e] @ (w[e]^T if transpose else w[e])."""
    if groups.grouped_mm:
        return F.grouped_mm(a, w.transpose(-2, -1) if transpose else w, offs=groups.offs)
    out = a.new_empty(a.shape[0], w.shape[1] if transpose else w.shape[2])
    for e, rows in groups.blocks():
        torch.mm(a[rows], w[e].t() if transpose else w[e], out=out[rows])
    return out


def _block_weight_grads(g: torch.Tensor, a: torch.Tensor, groups: _Groups, like: torch.Tensor) -> torch.Tensor:
    """grad[e] = g[rows of e]^T @ a[rows of e]; zero for experts without rows."""
    if groups.grouped_mm:
        return F.grouped_mm(g.t(), a, offs=groups.offs)
    grad = torch.zeros_like(like)
    for e, rows in groups.blocks():
        torch.mm(g[rows].t(), a[rows], out=grad[e])
    return grad


# ---- generation (no gradients) --------------------------------------------------------------------------
def grouped_mm(x, weights, indices, gate_up, down, *, counts, **_) -> torch.Tensor:
    """One grouped GEMM per projection for all experts (F.grouped_mm, bf16): no per-expert loop and no host
    sync, so it also suits CUDA graphs. No backward: its backward fails on the CPU build and is unverified
    on GPU, so training takes `grouped`."""
    N, K = indices.shape
    order = indices.view(-1).argsort(stable=True)
    token_of = order // K
    xs = x[token_of].to(torch.bfloat16)
    offs = counts.cumsum(0).to(torch.int32)
    w1 = gate_up.to(torch.bfloat16).transpose(-2, -1)
    w2 = down.to(torch.bfloat16).transpose(-2, -1)
    gate, up = F.grouped_mm(xs, w1, offs=offs).chunk(2, dim=-1)
    ys = F.grouped_mm(F.silu(gate) * up, w2, offs=offs).float() * weights.view(-1)[order].unsqueeze(-1)
    return torch.zeros(N, x.shape[-1], dtype=torch.float32, device=x.device).index_add_(0, token_of, ys)


def one_token(x, weights, indices, gate_up, down, *, packed: PackedExperts, **_) -> torch.Tensor:
    """A single token: its K experts directly, no sort."""
    out = None
    for k, e in enumerate(indices[0].tolist()):
        y = packed(e, x).float() * weights[:, k:k + 1]
        out = y if out is None else out + y
    return out


def sorted_loop(x, weights, indices, gate_up, down, *, counts, packed: PackedExperts, **_) -> torch.Tensor:
    """Token copies sorted by expert once, then one matmul per expert that has tokens (no padding)."""
    N, K = indices.shape
    order = indices.view(-1).argsort(stable=True)
    token_of = order // K
    xs = x[token_of]
    ys, start = [], 0
    for e, n in enumerate(counts.tolist()):
        if n:
            ys.append(packed(e, xs[start:start + n]))
            start += n
    ys = torch.cat(ys).float() * weights.view(-1)[order].unsqueeze(-1)
    return torch.zeros(N, x.shape[-1], dtype=torch.float32, device=x.device).index_add_(0, token_of, ys)


def indexed(x, weights, indices, gate_up, down, **_) -> torch.Tensor:
    """Each token gathers its experts' weights and multiplies them in one einsum: no data-dependent shapes
    and no host round trip, which is what torch.compile needs; only worth it for a few tokens."""
    w1, w2 = gate_up[indices], down[indices]  # [N, K, 2I, d], [N, K, d, I]
    gate, up = torch.einsum("nkid,nd->nki", w1, x.to(w1.dtype)).chunk(2, dim=-1)
    y = torch.einsum("nkdi,nki->nkd", w2, F.silu(gate) * up)
    return (y.float() * weights.unsqueeze(-1)).sum(1)


IMPLEMENTATIONS = {"reference": reference, "grouped": grouped, "grouped_mm": grouped_mm, "one_token": one_token,
                   "sorted": sorted_loop, "indexed": indexed}
