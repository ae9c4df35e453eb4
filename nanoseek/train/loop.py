"""The training loop: one for pretraining, SFT and GRPO. They differ only in their `Task` (data and loss).

One optimizer step:
    grad_accum x (batch <- task, forward under autocast, loss / grad_accum backward; gradients all-reduced
    on the last micro-batch only) -> clip the global grad norm -> stop on a non-finite loss or norm
    (before the update, so the last checkpoint stays the last good state) -> optimizer step -> router
    bias update from the step's expert counts (all micro-batches, all ranks) -> log / eval / checkpoint
    (only of finite weights: an update that blew up stops the run there too).

Precision: weights, gradients and optimizer state are fp32 (the master copy); matmuls run in bf16 under
autocast; the model keeps its router and losses in fp32 itself.
"""

from __future__ import annotations

import abc
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nanoseek.cost import flops_per_token, mfu, peak_flops
from nanoseek.errors import UserError
from nanoseek.hf import load_model, write_model_files
from nanoseek.model.moe import load_stats
from nanoseek.train import distributed as D
from nanoseek.train.checkpoint import (LATEST, capture_rng, checkpoints_dir, clean_partial, load_train_state,
                                       restore_rng, resume_point, save_checkpoint, saved_steps)
from nanoseek.train.config import TrainConfig
from nanoseek.train.log import RunLog, keep_aside
from nanoseek.train.optim import build_optimizers, set_lr
from nanoseek.train.schedule import lr_at


class TrainingDiverged(UserError, RuntimeError):
    """Loss, gradient norm or weights became NaN/inf; the message names the step and the checkpoint to resume
    from."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Task(abc.ABC):
    """What a training stage plugs into the loop: where batches come from and what the loss is.

    `loss` returns an object with `.loss` (the scalar to minimize) and optionally the DeepSeek-V3 parts
    `.main_loss`, `.mtp_losses`, `.balance_loss` and `.expert_counts` (a `nanoseek.ModelOutput` has them all),
    `.tokens` (the tokens this micro-batch trained on, when they vary) and `.metrics` (name -> scalar: the loop
    averages them over micro-batches and ranks and logs them under their names, knowing nothing of them).
    The loop weights every micro-batch (and, through gradient averaging, every rank) equally: a task whose
    micro-batches hold different numbers of target tokens (masked SFT, RL) and wants a per-token mean over
    the whole step normalizes its loss by the step's token count, which `begin_step` can learn.
    """

    #: tokens one micro-batch trains on, on this rank (tokens/s, MFU, the progress bar); None for a task whose
    #: batches vary: each reports its count as `.tokens` of its loss output (the bar then counts steps)
    tokens_per_batch: int | None
    #: step metrics (from begin_step or the losses) the progress bar shows besides the loss
    progress_metrics: tuple[str, ...] = ()

    def begin_step(self, model: nn.Module, step: int) -> dict[str, float] | None:
        """Called once per optimizer step, before its micro-batches (step counts from 1): GRPO generates the
        step's rollouts here and splits them into micro-batches. May return metrics of the step's data (reward,
        lengths...): averaged over ranks (names ending in _max / _min: the max / min) and logged."""
        return None

    @abc.abstractmethod
    def next_batch(self, model: nn.Module) -> Any:
        """The next micro-batch on this rank's device. `model` is there for tasks that sample from it (GRPO)."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any, cfg: TrainConfig) -> Any:
        """Forward `batch` through `model` (called under autocast) and return the losses."""

    def check_model(self, model_dir: Path) -> None:
        """Raise a UserError when the model in model_dir (a checkpoint to resume, or initial weights) does not
        fit this task's data (e.g. another tokenizer). Called before its weights are loaded."""

    def evaluate(self, model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
        """Validation metrics (called in eval mode, under no_grad and autocast); every rank calls it."""
        return {}

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-able position of the data stream, so a resumed run continues with the next batch."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # training loss of each step run in this call
    eval: dict[str, float] = field(default_factory=dict)  # the last evaluation
    checkpoint: Path | None = None  # the last checkpoint written


def train(model: nn.Module, task: Task, cfg: TrainConfig, run_dir: str | Path, *, info: D.DistInfo | None = None,
          resume: bool = False, write_extra: Callable[[Path], None] | None = None, progress: bool = True,
          announce: Callable[[str], None] = print) -> TrainResult:
    """Train `model` (a fp32 `DeepSeekV3`, same config as the checkpoint when resuming) on `task`.

    run_dir receives log.jsonl and checkpoints/. resume=True continues from checkpoints/latest: weights,
    optimizer, data position, RNG and step, so the continuation equals an uninterrupted run bit for bit.
    write_extra(dir) adds files to every checkpoint (the tokenizer). Only rank 0 logs and writes.
    """
    cfg.validate()
    run = _Run(model, task, cfg, Path(run_dir), info or D.DistInfo(device=torch.device("cpu")), resume, write_extra,
               announce)
    bar = _progress_bar(cfg, run.start, run.tokens_per_step) if progress and run.info.is_main else None
    result = TrainResult(step=run.start)
    try:
        for step in range(run.start + 1, cfg.steps + 1):
            done = run.step(step)
            result.step = step
            result.losses.append(done.loss)
            run.log_step(step, done, bar)
            run.periodic(step, done, result, bar)
        if run.log is not None:
            run.log.write("end", result.step, **{f"final_{k}": v for k, v in result.eval.items()})
    except TrainingDiverged as e:
        if run.log is not None:
            run.log.write("diverged", e.step, message=str(e))
        raise
    finally:
        if bar is not None:
            bar.close()
        if run.log is not None:
            run.log.close()
    if run.info.is_main and result.checkpoint is not None:
        announce(f"final checkpoint: {result.checkpoint}")
    return result


@dataclass
class _StepDone:
    """What one optimizer step measured."""
    loss: float
    grad_norm: float
    lr: float
    sums: torch.Tensor  # [loss, main, balance, mtp_1..D], averaged over micro-batches and ranks
    counts: torch.Tensor | None  # expert counts of the whole step (all ranks), None for a dense model
    metrics: dict[str, float]  # the task's, averaged
    tokens: int  # trained on this step, all ranks
    seconds: float


class _Run:
    """One call of `train`: set up (or resumed) at construction, then stepped; holds what the steps share."""

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, run_dir: Path, info: D.DistInfo,
                 resume: bool, write_extra: Callable[[Path], None] | None, announce: Callable[[str], None]):
        self.model, self.task, self.cfg, self.run_dir, self.info = model, task, cfg, run_dir, info
        self.write_extra = write_extra
        self.device = info.device
        self.amp_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
        state = None
        ckpt = resume_point(run_dir, resume)
        if ckpt is not None:
            task.check_model(ckpt)
            state = load_train_state(ckpt)
            if state.world_size != info.world_size and info.is_main:
                # Weights and optimizer state are saved whole, and the loader's position is global, so this works;
                # only the per-rank RNG streams cannot map one to one (rank r takes saved rank min(r, N-1)).
                announce(f"note: {ckpt.name} was written by {state.world_size} process(es), this run has "
                         f"{info.world_size}: the data continue where they stopped, but not bit for bit")
            _load_weights(model, ckpt)
        model.to(self.device).train()
        # the losses' weights (training settings, not saved with the model)
        model.mtp_weight, model.aux_loss_alpha = cfg.mtp_weight, cfg.aux_loss_alpha
        if cfg.compile:
            model.compile()  # in place: parameter names (checkpoints, optimizer state) stay unchanged
        self.fwd = D.wrap(model, cfg.parallel, info)
        self.optimizers = build_optimizers(model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                                           muon_momentum=cfg.muon_momentum)
        self.start = 0
        if state is not None:
            D.load_optimizer_state(model, self.optimizers, state.optimizer_state)
            r = min(info.rank, state.world_size - 1)
            task.load_state_dict(state.state["task_state"][r])
            restore_rng(state.state["rng"][r], state.rng_tensors[r])
            self.start = state.step
        else:
            _seed_all(cfg.seed)
        self.last_ckpt: Path | None = state.path if state else None
        self.tokens_seen = int(state.state.get("tokens", 0)) if state else 0
        self.tok_s_ema: float | None = None
        self.tokens_per_step = (task.tokens_per_batch * cfg.grad_accum * info.world_size if task.tokens_per_batch
                                else None)
        self.fpt = flops_per_token(model.config, cfg.seq_len).total
        self.peak, peak_src = (cfg.peak_flops * info.world_size, "--peak-flops") if cfg.peak_flops else (0.0, "")
        self.has_routers = bool(getattr(model, "n_routers", 0))
        self.log = None
        if info.is_main:
            clean_partial(run_dir)
            if not cfg.peak_flops:
                per_device, peak_src = peak_flops(self.device, self.amp_dtype or torch.float32)
                self.peak = per_device * info.world_size
            # a resumed run drops the records past its checkpoint; a new run starts a new log, keeping an old one
            if not resume and (kept := keep_aside(run_dir)) is not None:
                announce(f"note: {run_dir} held the log of an earlier run that wrote no checkpoint; kept it as {kept}")
            self.log = RunLog(run_dir, truncate_after_step=self.start if resume else None)
            sharded = sum(hasattr(p, "device_mesh") for p in model.parameters())  # FSDP2 DTensor shards
            self.log.write("resume" if resume else "start", self.start, config=cfg.to_dict(),
                           world_size=info.world_size, parallel=cfg.parallel if info.distributed else "none",
                           sharded_params=sharded, tokens_per_step=self.tokens_per_step, flops_per_token=self.fpt,
                           attention_flops="causal", peak_flops=self.peak, peak_source=peak_src,
                           **({"checkpoint": str(state.path)} if state else {}))
            announce(f"training log: {self.log.path}   checkpoints: {checkpoints_dir(run_dir)}"
                     + (f"   (resumed from {state.path.name})" if state else ""))

    def step(self, step: int) -> _StepDone:
        """One optimizer step: micro-batches, clip, the divergence check (before the update), update, bias."""
        cfg, model, info, device = self.cfg, self.model, self.info, self.device
        t0 = time.perf_counter()
        lr = lr_at(step - 1, total=cfg.steps, peak=cfg.lr, warmup=cfg.warmup, schedule=cfg.schedule,
                   min_ratio=cfg.min_lr_ratio, decay_frac=cfg.decay_frac)
        set_lr(self.optimizers, lr)
        step_metrics = _reduce_metrics(self.task.begin_step(model, step) or {}, info.world_size, device)
        sums, counts, task_metrics, n_tokens = _accumulate(self.fwd, model, self.task, cfg, self.amp_dtype, device)
        if counts is not None:  # expert load of the whole step: every rank balances on the same counts
            counts = D.all_reduce_sum(counts)
        grad_norm = _clip(model, cfg.grad_clip)
        # One all-reduce gives every rank the same global figures, so all ranks stop together.
        sums = D.all_reduce_sum(sums) / (cfg.grad_accum * info.world_size)
        step_metrics.update(_reduce_metrics(task_metrics, info.world_size, device, cfg.grad_accum))
        tokens = int(D.all_reduce_sum(n_tokens).item())
        loss, gnorm = sums[0].item(), grad_norm.item()
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            raise TrainingDiverged(_diverged_message(step, loss, gnorm, self.last_ckpt, self.run_dir,
                                                     _max_abs_weight(model)), step)
        for opt in self.optimizers:
            opt.step()
        # fused AdamW writes the weights without bumping their version counters: bump them, so that code
        # keyed on them (the engine's derived weights, RL rollouts from the live weights) sees the update
        torch.autograd.graph.increment_version([p for p in model.parameters() if p.grad is not None])
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.has_routers and counts is not None and cfg.bias_update_gamma > 0:
            model.update_router_biases(counts, cfg.bias_update_gamma, cfg.bias_update_rule)
        return _StepDone(loss, gnorm, lr, sums, counts, step_metrics, tokens, time.perf_counter() - t0)

    def log_step(self, step: int, done: _StepDone, bar) -> None:
        """The step's log record (every --log-every steps) and the progress bar."""
        cfg = self.cfg
        self.tokens_seen += done.tokens
        tok_s = done.tokens / done.seconds
        self.tok_s_ema = tok_s if self.tok_s_ema is None else 0.9 * self.tok_s_ema + 0.1 * tok_s
        if step % cfg.log_every == 0 or step == cfg.steps:
            rec = _step_metrics(done.sums, done.counts, self.model, self.has_routers, step) if self.info.is_main else {}
            if self.log is not None:
                self.log.write("train", step, loss=done.loss, lr=done.lr, grad_norm=done.grad_norm,
                               tokens=self.tokens_seen, tokens_per_s=tok_s, mfu=mfu(tok_s, self.fpt, self.peak),
                               step_time=done.seconds, **rec, **done.metrics)
        if bar is not None:
            bar.update(done.tokens if self.tokens_per_step else 1)
            # the same names as log.jsonl's records: loss is the total (main + MTP + balance), main_loss the
            # next-token loss, tokens_per_s the training steps' own rate (a moving average of the log's)
            shown = {k: f"{done.metrics[k]:.4f}" for k in self.task.progress_metrics if k in done.metrics}
            bar.set_postfix(step=step, loss=f"{done.loss:.4f}", main_loss=f"{done.sums[1].item():.4f}", **shown,
                            lr=f"{done.lr:.2e}", tokens_per_s=f"{self.tok_s_ema:,.0f}", refresh=False)

    def periodic(self, step: int, done: _StepDone, result: TrainResult, bar) -> None:
        """Evaluation every --eval-every steps and a checkpoint every --checkpoint-every (both at the last)."""
        cfg = self.cfg
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            result.eval = _evaluate(self.model, self.task, cfg, self.amp_dtype, self.device)
            if self.log is not None and result.eval:
                self.log.write("eval", step, **result.eval)
                if bar is not None:
                    bar.write(f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in result.eval.items()))
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            # the loss and norm were finite before the update, but the update itself may not have been
            bad = _non_finite(self.model)
            if D.all_reduce_sum(torch.tensor(float(len(bad)), device=self.device)).item():
                raise TrainingDiverged(_non_finite_message(step, done.loss, done.grad_norm, bad, self.last_ckpt),
                                       step)
            self.last_ckpt = _checkpoint(self.run_dir, step, self.model, self.optimizers, self.task, cfg, self.info,
                                         self.write_extra, tokens=self.tokens_seen,
                                         metrics={"loss": done.loss, "grad_norm": done.grad_norm})
            result.checkpoint = self.last_ckpt
            if self.log is not None:
                self.log.write("checkpoint", step, path=str(self.last_ckpt))


# ---- pieces of a step -------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def _accumulate(fwd: nn.Module, model: nn.Module, task: Task, cfg: TrainConfig, amp_dtype, device
                ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor], torch.Tensor]:
    """Run the micro-batches of one step. Returns (sums [loss, main, balance, mtp_1..D] over micro-batches,
    expert counts [n_routers, E] summed over micro-batches of this rank, or None for a dense model, the task's
    metrics summed over micro-batches (those named *_max / *_min: their max / min), the tokens trained on)."""
    sums, counts, metrics = None, None, {}
    tokens = torch.zeros((), dtype=torch.int64, device=device)
    for micro in range(cfg.grad_accum):
        batch = task.next_batch(model)
        with D.grad_sync(fwd, sync=micro == cfg.grad_accum - 1):
            with _autocast(device, amp_dtype):
                out = task.loss(fwd, batch, cfg)
            (out.loss / cfg.grad_accum).backward()
        zero = out.loss.new_zeros(())
        main, bal = getattr(out, "main_loss", None), getattr(out, "balance_loss", None)
        parts = [out.loss, out.loss if main is None else main, zero if bal is None else bal]
        parts += list(getattr(out, "mtp_losses", None) or [])
        vec = torch.stack([p.detach().float().reshape(()) for p in parts])
        sums = vec if sums is None else sums + vec
        c = getattr(out, "expert_counts", None)
        if c is not None:
            counts = c.detach() if counts is None else counts + c.detach()
        for k, v in (getattr(out, "metrics", None) or {}).items():
            v = torch.as_tensor(v, dtype=torch.float32, device=device).detach().reshape(())
            metrics[k] = v if k not in metrics else _combine(k)(metrics[k], v)
        n = getattr(out, "tokens", None)
        tokens += task.tokens_per_batch if n is None else torch.as_tensor(n, device=device).to(torch.int64)
    return sums, counts, metrics, tokens


def _combine(name: str):
    """How a named metric of two micro-batches combines: the max / min for *_max / *_min, else the sum."""
    return torch.maximum if name.endswith("_max") else torch.minimum if name.endswith("_min") else torch.add


def _reduce_metrics(metrics: dict, world_size: int, device: torch.device, n_micro: int = 1) -> dict[str, float]:
    """Average named scalars over micro-batches (they come summed) and ranks; names ending in _max / _min take
    the max / min over ranks instead (already the step's max / min). Every rank passes the same names."""
    if not metrics:
        return {}
    names = sorted(metrics)
    vec = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float64, device=device).reshape(()) for k in names])
    out = {}
    for kind, fn in (("max", D.all_reduce_max), ("min", D.all_reduce_min)):
        idx = [i for i, k in enumerate(names) if k.endswith("_" + kind)]
        if idx:
            out.update(zip([names[i] for i in idx], fn(vec[idx].clone()).tolist()))
    idx = [i for i, k in enumerate(names) if names[i] not in out]
    if idx:
        mean = D.all_reduce_sum(vec[idx].clone()) / (world_size * n_micro)
        out.update(zip([names[i] for i in idx], mean.tolist()))
    return out


def _clip(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; returns the norm before clipping (inf max_norm: measure only)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


LOAD_VALUES_PER_RECORD = 4096  # expert loads of bigger models go into every 100th record only


def _step_metrics(sums: torch.Tensor, counts: torch.Tensor | None, model: nn.Module, has_routers: bool, step: int
                  ) -> dict[str, Any]:
    rec: dict[str, Any] = {"main_loss": sums[1].item()}
    if sums.numel() > 3:
        rec["mtp_losses"] = sums[3:].tolist()
    if has_routers:
        rec["balance_loss"] = sums[2].item()
        if counts is not None:
            c = counts.float()
            # per MoE layer (MTP layers last): MaxVio (max/mean tokens per expert - 1; 0 is perfect balance) and
            # the share of its experts starved this step (docs/architecture.md §4.5)
            rec["expert_maxvio"], rec["experts_starved"] = load_stats(c)
            if c.numel() <= LOAD_VALUES_PER_RECORD or step % 100 == 0:
                # each expert's share of its layer's tokens (the report's load heatmaps)
                rec["expert_load"] = [[round(x, 4) for x in row] for row in (c / c.sum(1, keepdim=True).clamp_min(1)).tolist()]
        biases = torch.stack([r.e_score_correction_bias for r in model.routers()])
        rec["router_bias_min"], rec["router_bias_max"] = biases.min().item(), biases.max().item()
    return rec


@torch.no_grad()
def _evaluate(model: nn.Module, task: Task, cfg: TrainConfig, amp_dtype, device) -> dict[str, float]:
    model.eval()
    try:
        with _autocast(device, amp_dtype):
            return task.evaluate(model, cfg)
    finally:
        model.train()


def _checkpoint(run_dir: Path, step: int, model: nn.Module, optimizers, task: Task, cfg: TrainConfig,
                info: D.DistInfo, write_extra, tokens: int, metrics: dict[str, float]) -> Path:
    # Collectives first (every rank takes part), then rank 0 writes.
    task_states = D.gather_objects(task.state_dict())
    rng_js, rng_t = capture_rng()
    rng_all = D.gather_objects((rng_js, rng_t))
    sharded = info.distributed and cfg.parallel == "fsdp"
    full_sd = D.full_model_state(model) if sharded else None
    osd = D.full_optimizer_state(model, optimizers)
    path = checkpoints_dir(run_dir) / "unwritten"
    if info.is_main:
        source = _snapshot(model, full_sd) if sharded else model
        path = save_checkpoint(
            run_dir, step, write_model=lambda d: write_model_files(source, d), optimizer_state=osd,
            state={"step": step, "tokens": tokens, **metrics, "world_size": info.world_size,
                   "train_config": cfg.to_dict(),
                   "task_state": task_states, "rng": [js for js, _ in rng_all]},
            rng_tensors=[t for _, t in rng_all], write_extra=write_extra, keep_last=cfg.keep_last)
    D.barrier()
    return path


def _snapshot(model: nn.Module, full_sd: dict[str, torch.Tensor]) -> nn.Module:
    """A CPU DeepSeekV3 holding gathered full weights (FSDP), for write_model_files."""
    with torch.device("meta"):
        snap = type(model)(model.config)
    snap.load_state_dict(full_sd, strict=True, assign=True)
    return snap


def _load_weights(model: nn.Module, ckpt: Path) -> None:
    loaded = load_model(ckpt, dtype=torch.float32, device="cpu")
    model.load_state_dict(loaded.state_dict(), strict=True)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _max_abs_weight(model: nn.Module) -> float | None:
    """The largest |weight| (None for sharded FSDP parameters, which no one rank holds whole)."""
    params = list(model.parameters())
    if any(hasattr(p, "device_mesh") for p in params):
        return None
    return max(p.detach().abs().max().item() for p in params)


def _non_finite(model: nn.Module) -> list[str]:
    """The parameters and floating-point buffers holding NaN or inf (of this rank's shards, under FSDP)."""
    bad = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        t = t.to_local() if hasattr(t, "to_local") else t
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def _non_finite_message(step: int, loss: float, gnorm: float, bad: list[str], last_ckpt: Path | None) -> str:
    where = f"{len(bad)} tensor(s), first {bad[0]}" if bad else "on another process's shards"
    head = (f"training diverged at step {step}: its update left NaN or inf in the weights ({where}), though its loss "
            f"({loss:.4g}) and gradient norm ({gnorm:.4g}) were finite: the step itself blew up (--lr too high for "
            "these weights). No checkpoint was written with them")
    if last_ckpt is None:
        return f"{head}, and none was written before: restart with a lower --lr"
    return f"{head}; the last checkpoint, {last_ckpt}, is untouched: resume from it with --resume and a lower --lr"


def _diverged_message(step: int, loss: float, gnorm: float, last_ckpt: Path | None, run_dir: Path,
                      weight_max: float | None = None) -> str:
    """What diverged, and which checkpoint to resume from (docs/architecture.md §7.4 explains the choice).

    A checkpoint written after step S holds the weights step S+1 ran on: when S+1 is the step that diverged,
    those weights are already off, and resuming from them replays the same batches into the same NaN."""
    what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {gnorm}"
    head = f"training diverged at step {step}: {what}. Stopped before the optimizer update"
    if last_ckpt is None:
        return f"{head}; no checkpoint was written yet: restart with a lower --lr"
    if int(last_ckpt.name.removeprefix("step_")) != step - 1:
        return f"{head}. The last checkpoint, {last_ckpt}, is untouched: resume from it with --resume and a lower --lr"
    largest = f" (its largest |weight| is {weight_max:.3g})" if weight_max is not None else ""
    msg = (f"{head}. The last checkpoint, {last_ckpt} (untouched), holds the weights this step ran on{largest}: "
           "resuming from it diverges again, whatever the --lr")
    names = [c.name for c in saved_steps(run_dir)]
    earlier = saved_steps(run_dir)[:names.index(last_ckpt.name)] if last_ckpt.name in names else []
    if not earlier:
        return f"{msg}. No earlier checkpoint is kept (--keep-last): restart with a lower --lr"
    return (f"{msg}. Resume from an earlier checkpoint, {earlier[-1]}: write '{earlier[-1].name}' into "
            f"{last_ckpt.parent / LATEST}, then --resume with a lower --lr (docs/architecture.md §7.4)")


def _progress_bar(cfg: TrainConfig, start: int, tokens_per_step: int | None):
    if not tokens_per_step:  # batches of varying length (RL): count steps
        return tqdm(total=cfg.steps, initial=start, unit="step", desc="train", dynamic_ncols=True, smoothing=0.1,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}{postfix}]")
    # No tqdm rate: it would count evaluation and checkpoint time too and disagree with tokens_per_s. The
    # remaining-time estimate does include them, which is what a remaining time should do.
    return tqdm(total=cfg.steps * tokens_per_step, initial=start * tokens_per_step, unit="tok", unit_scale=True,
                desc="train", dynamic_ncols=True, smoothing=0.1,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tokens "
                           "[{elapsed}<{remaining}{postfix}]")
