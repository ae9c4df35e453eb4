"""Small building blocks shared by attention, MoE and the decoder: RMSNorm and the SwiGLU MLP."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 (as HF and DeepSeek do), cast back, then scale.
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _RMSNorm.apply(x, self.weight, self.eps)  # the same, with a cheaper backward
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class _RMSNorm(torch.autograd.Function):
    """rms_norm(x in fp32).to(x.dtype) * weight, forward and backward written out.

    On CPUs PyTorch fuses rms_norm's forward but not its backward: autograd through it ran ten elementwise
    passes over [tokens, d] (2.0 ms forward + backward at 2048 x 256, 2 threads), where the gradient needs
    five (1.2-1.35 ms): with y = x * rstd, dx = rstd * (dy - y * mean(dy * y)) and dy = g * weight. Nine
    norms of width 256 run in every cpu-small training step."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = torch.ops.aten._fused_rms_norm(x.float(), [x.shape[-1]], None, eps)
        ctx.save_for_backward(x, rstd, weight)
        return y.to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        y = x.float() * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * y.to(x.dtype)).reshape(-1, grad.shape[-1]).sum(0, dtype=torch.float32)
            grad_weight = grad_weight.to(weight.dtype)
        dy = (grad * weight).float()
        dot = (dy * y).mean(-1, keepdim=True)
        # A row whose mean square overflowed fp32 (rstd 0: the forward gave zeros) has no usable gradient: NaN,
        # not a silent zero, so that training stops at the step where the weights blew up (as it did when
        # autograd ran through rms_norm: its gradients turned NaN at that step too).
        scale = rstd.masked_fill(rstd == 0, float("nan"))
        grad_x = dy.sub_(y.mul_(dot)).mul_(scale)
        return grad_x.to(x.dtype), grad_weight, None


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(u)) * up(u)), no biases (docs/architecture.md §4.1). Dense FFN and shared experts."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def autocast_off(x: torch.Tensor):
    """A context that turns autocast off on x's device for code that must run in its own dtypes; no context at
    all when autocast is off already, so a compiled inference graph holds no autocast region (AOTAutograd's
    on-disk cache refuses graphs that do, and a warm start would trace them again)."""
    dev = x.device.type
    return torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else contextlib.nullcontext()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype when autocast is on for x's device, else x's."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype
