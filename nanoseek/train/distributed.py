"""torch.distributed for the training loop: process-group setup under torchrun, and data parallelism applied
to the model from outside (torchtitan's approach: the model code knows nothing of ranks).

* ddp: every rank holds the whole model; gradients are averaged by DistributedDataParallel.
* fsdp: FSDP2 `fully_shard` per decoder layer (and per MTP attention / MoE), then the root (embedding, head,
  final norm and the rest):
  parameters, gradients and optimizer state are sharded; each layer is gathered just for its compute.

gloo on CPU, NCCL on CUDA. The router's correction bias is a buffer, so neither wrapper touches it: every
rank applies the same update because the training loop sums the step's expert counts over ranks
(`all_reduce_sum`) before `DeepSeekV3.update_router_biases`.
Expert parallelism (experts split across ranks with all-to-all token exchange) is not implemented.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process.

    Under torchrun with CUDA each process takes the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def teardown(clean: bool = True) -> None:
    """Leave the process group. After a finished run (clean) every rank first frees what still references
    the group (FSDP/DDP state, gloo work objects) and waits for the others: such objects dying during
    interpreter shutdown need the GIL while Python is torn down, which aborts the process (seen once as a
    SIGABRT, "terminate called without an active exception", after a finished 2-process run). After an
    error there is no barrier: the other ranks may never reach it."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if clean:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()


def wrap(model: nn.Module, mode: str, info: DistInfo) -> nn.Module:
    """The module to call for training forward passes. `model` itself stays the handle for state, eval and
    router updates (FSDP2 shards it in place; DDP wraps it)."""
    if not info.distributed:
        return model
    if mode == "ddp":
        return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard  # imported on use: see _options

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        # An MTP module's shared_head.norm is called by the model after the module's forward returns, when a
        # module-level unit would already be resharded: shard its attention and MoE, leave the small rest
        # (norms, eh_proj) to the root unit, which stays gathered for the whole forward.
        for module in model.mtp:
            fully_shard(module.self_attn, mesh=mesh)
            fully_shard(module.mlp, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}; choose ddp or fsdp")


@contextlib.contextmanager
def full_weights(model: nn.Module):
    """Every parameter of `model` whole for the duration (FSDP2: all-gathered, resharded on exit), so that code
    outside the training forward can read them: RL rollouts generate from the live training weights. A no-op
    for an unsharded model (one process, DDP). Every rank must enter it (it all-gathers)."""
    from torch.distributed.fsdp import FSDPModule  # imported on use: see _options

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
    try:
        yield model
    finally:
        for m in reversed(sharded):
            m.reshard()


def grad_sync(fwd: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if hasattr(fwd, "no_sync"):  # DDP
        return contextlib.nullcontext() if sync else fwd.no_sync()
    if hasattr(fwd, "set_requires_gradient_sync"):  # FSDP2
        fwd.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def call_as_forward(fwd: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(model, *args) as a training forward of `fwd` (the module `wrap` returned): the wrappers act only
    around `forward` (DDP prepares the gradient all-reduce, FSDP2 gathers the root's weights, the head's
    included), so fn stands in for the model's forward for this one call. For a loss that needs something
    other than the model's forward computes, e.g. RL's log-probabilities from `hidden_states`."""
    model = getattr(fwd, "module", fwd)  # DDP holds the model as .module; FSDP2 and one process: fwd itself
    model.forward = functools.partial(fn, model)  # an instance attribute shadows the class's forward
    try:
        return fwd(*args)
    finally:
        del model.forward


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (JSON-able), in rank order; [obj] without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _options():
    # torch.distributed's FSDP and checkpoint modules take ~0.5-1 s to import, which `nanoseek --help` (it
    # imports this module) and every one-process run would pay: they are imported where they are used.
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole (unsharded) weights on the CPU; under torch.distributed only rank 0 receives them (others {})."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
    """Optimizer state keyed by parameter name, unsharded, on the CPU (rank 0 only under torch.distributed)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizers, options=_options())


def load_optimizer_state(model: nn.Module, optimizers: list[torch.optim.Optimizer], osd: dict[str, Any]) -> None:
    """Load a full name-keyed optimizer state (every rank passes the same dict; FSDP keeps its shard).

    A parameter that never had a gradient in the saved run has no state in it (GRPO never trains the MTP
    module): it gets none here either, as if this optimizer had never stepped it, so the resumed run holds
    exactly the state the uninterrupted one did."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    params = dict(model.named_parameters())
    stateless = [p for name, p in params.items() if p.requires_grad and name not in osd["state"]]
    set_optimizer_state_dict(model, optimizers, osd,
                             options=StateDictOptions(full_state_dict=True, strict=not stateless))
    for opt in optimizers:  # the loader filled them with a zero-gradient step's state: drop it
        for p in stateless:
            opt.state.pop(p, None)
