"""Weights laid out for generation's small matmuls (inference only; nanoseek.model.inference owns them).

A decode step multiplies a handful of rows by every weight matrix, so it is bound by reading weights and by
per-op overhead, not by arithmetic. On CPU in fp32, MKL's GEMM with few rows runs about twice as fast with the
weight stored [in, out] (x @ W) as with the parameter's [out, in] (x @ W^T, what F.linear does); in bf16 and
on GPU the parameter layout is as fast, and the parameter itself is used (no copy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def row_major_faster(w: torch.Tensor) -> bool:
    """Whether this weight should be stored [in, out] for small-M matmuls (see the module docstring)."""
    return w.device.type == "cpu" and w.dtype == torch.float32


class PackedLinear:
    """y = x W^T + b with W [out, in] given, stored in the faster layout for few-row inputs."""

    __slots__ = ("w", "b", "t")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.t = row_major_faster(weight)
        # the parameter itself when its layout is already right (no second copy of the weights)
        self.w = weight.detach().t().contiguous() if self.t else weight.contiguous()
        self.b = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.t:
            return F.linear(x, self.w, self.b)
        y = torch.matmul(x, self.w)
        return y if self.b is None else y + self.b


class PackedExperts:
    """Stacked SwiGLU experts (gate_up [E, 2I, d], down [E, d, I]) in the faster layout, callable per expert."""

    __slots__ = ("w1", "w2", "t")

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor):
        self.t = row_major_faster(gate_up)
        if self.t:
            self.w1, self.w2 = gate_up.detach().transpose(1, 2).contiguous(), down.detach().transpose(1, 2).contiguous()
        else:
            self.w1, self.w2 = gate_up, down

    def __call__(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on rows x [n, d] -> [n, d] (in x's dtype)."""
        if self.t:
            gate, up = torch.mm(x, self.w1[e]).chunk(2, dim=-1)
            return torch.mm(F.silu(gate) * up, self.w2[e])
        gate, up = F.linear(x, self.w1[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.w2[e])


class PackedMLP:
    """A SwiGLU MLP (nanoseek.model.layers.MLP) with gate and up fused into one matmul, packed."""

    __slots__ = ("gate_up", "down")

    def __init__(self, mlp):
        self.gate_up = PackedLinear(torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)).detach())
        self.down = PackedLinear(mlp.down_proj.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)
