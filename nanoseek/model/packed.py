"""Weights laid out for generation's small matmuls, derived once from the parameters (inference only).

A decode step multiplies a handful of rows by every weight matrix, so it is bound by reading weights and by
per-op overhead, not by arithmetic. On CPU in fp32, MKL's GEMM with few rows runs about twice as fast with the
weight stored [in, out] (x @ W) as with the parameter's [out, in] (x @ W^T, what F.linear does); in bf16 and
on GPU the parameter layout is as fast. `PackedLinear` holds whichever layout is faster, and `derived`
caches such copies per module, rebuilding them when a parameter changes (an RL trainer updating the weights
between rollouts bumps their version counters), so generation never uses stale weights.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T")


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


def derived(module: nn.Module, build: Callable[[], T], params: list[torch.Tensor] | None = None,
            tag: str = "") -> T:
    """build() once per module (and tag), and again whenever one of `params` (default: all the module's
    parameters) was reassigned, moved, cast or modified in place. Kept outside the module's parameters and
    buffers.

    A rebuild with unchanged shapes is copied into the existing tensors, so code compiled against them (the
    engine's torch.compile'd decode step) stays valid. Inside a compiled region the check is skipped: the
    caller refreshes before entering it (DeepSeekV3.prepare_inference).
    """
    store = module.__dict__.setdefault("_nanoseek_derived", {})
    hit = store.get(tag)
    if torch.compiler.is_compiling():
        return hit[1]
    params = list(module.parameters()) if params is None else params
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    if hit is None or hit[0] != key:
        new = build()
        if hit is not None and _copy_into(hit[1], new):
            new = hit[1]
        hit = (key, new)
        store[tag] = hit
    return hit[1]


def _leaves(obj) -> list:
    if isinstance(obj, torch.Tensor) or obj is None:
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [x for o in obj for x in _leaves(o)]
    names = getattr(obj, "__slots__", None) or getattr(obj, "__dataclass_fields__", None) or ()
    return [x for n in names for x in _leaves(getattr(obj, n))]


def _copy_into(old, new) -> bool:
    """Copy new's tensors into old's when both have the same structure, shapes and dtypes and none of old's
    is a parameter (those are the module's own tensors, shared rather than copied)."""
    a, b = _leaves(old), _leaves(new)
    if type(old) is not type(new) or len(a) != len(b):
        return False
    pairs = []
    for x, y in zip(a, b):
        if x is None or y is None:
            if x is not y:
                return False
        elif x is not y:
            if isinstance(x, nn.Parameter) or x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
                return False
            pairs.append((x, y))
    with torch.inference_mode():
        for x, y in pairs:
            x.copy_(y)
    return True
