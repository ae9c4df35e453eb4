"""Optimizers: AdamW with DeepSeek's settings, and Muon for the hidden matrices.

Weight decay (decoupled, 0.1 by default) applies to every tensor with two or more dimensions: attention and
FFN matrices, stacked experts, the router's scoring matrix, the embedding and the output head. Norm weights
and biases (1-D) are not decayed: decaying a norm gain pulls it towards 0 instead of towards "no effect".
This is Megatron's rule (DeepSeek's training lineage); DeepSeek-V3 only states "weight decay 0.1".
The router's correction bias is a buffer, never seen by an optimizer (docs/architecture.md §4.5).

Muon (Jordan et al. 2024; at scale: Liu et al. 2025, "Muon is Scalable for LLM Training", Moonlight) replaces
each hidden matrix's momentum update by its nearest semi-orthogonal matrix, computed with a few Newton-Schulz
iterations. It applies to the 2-D matrices inside the blocks (and MTP's eh_proj) and to the stacked routed
experts [E, out, in], which are orthogonalized one expert at a time (a batched matmul). Embedding, output
head and router stay on AdamW: their rows are looked up or scored one at a time, not mixed as a linear map.
The update is scaled by 0.2 x sqrt(max(out, in)) so its RMS matches AdamW's (Moonlight, section 2.2): the
same --lr and --weight-decay then serve both optimizers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Quintic Newton-Schulz coefficients (Jordan et al.): chosen so that singular values in (0, 1] are pushed
# quickly into a band around 1 (about 0.7..1.2) rather than converging exactly, which is all Muon needs.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T, per matrix over the last two dims (leading dims are a batch).

    Runs in bf16 (the iteration is self-correcting, and bf16 matmuls are several times faster on CPUs with
    bf16 units as on GPUs), returns g's dtype. Each iteration x <- a x + (b G + c G^2) x with G = x x^T is
    computed as M x with M = a I + b G + c G^2: the scaling and the sums then touch only the small Gram-sized
    M, never the large x (on a 2-core CPU that halved the time of a [16, 512, 256] expert stack: the
    elementwise passes over x cost as much as its matmuls).
    """
    a, b, c = _NS_COEFFS
    x = g.to(torch.bfloat16)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: x x^T is then the smaller Gram matrix
        x = x.mT
    shape = x.shape
    x = x.reshape(-1, shape[-2], shape[-1])
    # Frobenius norm >= spectral norm, so after this every singular value is <= 1 (the iteration's domain).
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        m = torch.bmm(gram, gram).mul_(c).add_(gram, alpha=b)
        m.diagonal(dim1=-2, dim2=-1).add_(a)
        x = torch.bmm(m, x)
    x = x.view(shape)
    if tall:
        x = x.mT
    return x.to(g.dtype)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2 shard) as the whole tensor; plain tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `ref`: for a DTensor, this rank's shard (every rank holds the same `full`)."""
    if hasattr(ref, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor  # ~1 s to import: only FSDP runs need it

        return distribute_tensor(full, ref.device_mesh, ref.placements, src_data_rank=None)
    return full


class Muon(torch.optim.Optimizer):
    """Momentum (Nesterov) -> orthogonalize -> scaled, decoupled-decay step. For 2-D and stacked 3-D weights."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, weight_decay: float = 0.1,
                 nesterov: bool = True, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                      ns_steps=ns_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() not in (2, 3):
                    raise ValueError(f"Muon takes matrices or stacked matrices, got a {p.dim()}-D parameter")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            # Parameters of one shape are orthogonalized together, as one batch of matrices: one call per
            # shape instead of one per parameter (the attention matrices of every layer, the expert stacks of
            # every MoE layer). A sharded FSDP parameter goes alone: it is gathered whole first.
            batches: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(p.grad)
                update = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
                key = ("alone", id(p)) if hasattr(p, "device_mesh") else (tuple(p.shape), p.dtype, p.device)
                batches.setdefault(key, []).append((p, update))
            for items in batches.values():
                if len(items) == 1:
                    # Newton-Schulz needs the whole matrix: gather an FSDP shard, then keep this rank's part.
                    p, update = items[0]
                    orthos = [_like(orthogonalize(_full(update), group["ns_steps"]), p)]
                else:
                    orthos = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"]).unbind(0)
                for (p, _), ortho in zip(items, orthos):
                    out_dim, in_dim = p.shape[-2], p.shape[-1]
                    p.mul_(1.0 - lr * wd)
                    p.add_(ortho, alpha=-lr * 0.2 * math.sqrt(max(out_dim, in_dim)))
        return loss


def param_groups(model: nn.Module, muon: bool) -> tuple[list, list, list]:
    """Split parameters into (AdamW decayed, AdamW not decayed, Muon) lists of (name, param)."""
    decay, no_decay, hidden = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            no_decay.append((name, p))
        elif muon and not _adamw_only(name):
            hidden.append((name, p))
        else:
            decay.append((name, p))
    return decay, no_decay, hidden


def _adamw_only(name: str) -> bool:
    return name.endswith("embed_tokens.weight") or name.startswith("lm_head.") or name.endswith("mlp.gate.weight")


def build_optimizers(model: nn.Module, *, name: str = "adamw", lr: float, weight_decay: float,
                     betas: tuple[float, float], eps: float, muon_momentum: float = 0.95, ns_steps: int = 5,
                     fused: bool | None = None) -> list[torch.optim.Optimizer]:
    """AdamW for everything (name="adamw"), or Muon for the hidden matrices plus AdamW for the rest.

    fused: the single-kernel AdamW (fastest on CPU and GPU); None picks it for plain tensors and the
    multi-tensor foreach variant when parameters are FSDP2 DTensors.
    """
    if name not in ("adamw", "muon"):
        raise ValueError(f"unknown optimizer {name!r}; choose adamw or muon")
    decay, no_decay, hidden = param_groups(model, muon=name == "muon")
    if fused is None:
        fused = not any(hasattr(p, "device_mesh") for _, p in decay + no_decay)
    groups = [dict(params=[p for _, p in decay], weight_decay=weight_decay),
              dict(params=[p for _, p in no_decay], weight_decay=0.0)]
    groups = [g for g in groups if g["params"]]
    opts: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None, foreach=None if fused else True)]
    if hidden:
        opts.append(Muon([p for _, p in hidden], lr=lr, momentum=muon_momentum, weight_decay=weight_decay,
                         ns_steps=ns_steps))
    return opts


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
