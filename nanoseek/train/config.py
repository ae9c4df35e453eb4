"""TrainConfig: every setting of a training run, one dataclass; each field is a command-line flag.

The flags are generated from the fields (name, type, default and the `help` in the field's metadata), so
the CLI, the saved checkpoint state and the Python API can never disagree about a setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nanoseek.train.schedule import SCHEDULES


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    # ---- length and batch ----
    steps: int = _f(1000, "optimizer steps to train for (the schedule spans them)")
    batch_size: int = _f(8, "sequences per micro-batch on each process")
    seq_len: int = _f(256, "tokens per sequence")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step; global batch = "
                            "batch_size x grad_accum x processes sequences")
    # ---- optimizer ----
    optimizer: str = _f("adamw", "adamw: AdamW for all weights; muon: Muon for the hidden matrices (stacked experts "
                                 "orthogonalized per expert) and AdamW for embeddings, head, router, norms",
                        ("adamw", "muon"))
    lr: float = _f(3e-3, "peak learning rate (Muon's update is RMS-matched to AdamW's, so one lr serves both)")
    schedule: str = _f("wsd", "lr schedule: wsd (warmup, stable, linear decay), cosine, constant", SCHEDULES)
    warmup_steps: int | None = _f(None, "linear warm-up steps (default: 2%% of --steps, at most 20 and at least 1, "
                                        "so it scales with the run, also when a resume changes --steps)")
    decay_frac: float = _f(0.2, "wsd: fraction of the steps spent decaying at the end")
    min_lr_ratio: float = _f(0.1, "final lr as a fraction of the peak (DeepSeek-V3: 2.2e-5 / 2.2e-4 = 0.1)")
    weight_decay: float = _f(0.1, "decoupled weight decay on matrices (not on norms or biases)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2 (DeepSeek: 0.95)")
    adam_eps: float = _f(1e-8, "AdamW epsilon")
    muon_momentum: float = _f(0.95, "Muon Nesterov momentum")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 disables clipping)")
    # ---- DeepSeek-V3 objective ----
    mtp_weight: float = _f(0.3, "lambda: weight of the multi-token-prediction loss (DeepSeek-V3: 0.3, later 0.1)")
    bias_update_gamma: float = _f(1e-3, "gamma: aux-loss-free router bias step per optimizer step (0 freezes it)")
    bias_update_rule: str = _f("sign", "router bias step: sign (DeepSeek-V3: +-gamma per expert) or proportional "
                                       "(gamma x the expert's relative load error, docs/architecture.md §4.5)",
                               ("sign", "proportional"))
    aux_loss_alpha: float = _f(1e-4, "alpha: sequence-wise balance loss weight (DeepSeek-V3: 1e-4; 0 disables)")
    # ---- evaluation, logging, checkpoints ----
    eval_every: int = _f(100, "evaluate (validation loss, bits per byte) every N steps and at the end "
                              "(0: only at the end)")
    eval_batches: int = _f(20, "validation batches per evaluation")
    log_every: int = _f(1, "write a JSONL training record every N steps")
    checkpoint_every: int = _f(500, "write a checkpoint every N steps and at the end (0: only at the end)")
    keep_last: int = _f(3, "checkpoints to keep (older ones are deleted)")
    seed: int = _f(0, "seed for weight init and data order")
    # ---- hardware ----
    device: str = _f("auto", "where to run (auto: cuda when available, else cpu)", ("auto", "cpu", "cuda"))
    dtype: str = _f("bfloat16", "matmul dtype under autocast; weights, gradients and optimizer state stay fp32",
                    ("bfloat16", "float32"))
    compile: bool = _f(False, "torch.compile the model (slow first step, faster after)")
    parallel: str = _f("ddp", "under torchrun: ddp (replicate weights) or fsdp (FSDP2 fully_shard)", ("ddp", "fsdp"))
    peak_flops: float = _f(0.0, "peak FLOP/s per device for MFU (0: datasheet for known GPUs, else a matmul "
                                "measured at start)")

    def validate(self) -> "TrainConfig":
        def need(cond: bool, flag: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"--{flag.replace('_', '-')} {msg}")

        for f in dataclasses.fields(self):  # inf and nan pass every range check below, and train to NaN weights
            v = getattr(self, f.name)
            if isinstance(v, float):
                need(math.isfinite(v), f.name, f"must be a finite number, got {v}")
        for name in ("steps", "batch_size", "grad_accum", "eval_batches", "log_every", "keep_last"):
            need(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        need(self.seq_len >= 2, "seq_len", f"must be >= 2, got {self.seq_len}")
        for name in ("eval_every", "checkpoint_every"):
            need(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps is not None:
            need(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
            need(self.warmup_steps <= self.steps, "warmup_steps",
                 f"({self.warmup_steps}) must not exceed --steps ({self.steps}); leave it out for the default, which "
                 "scales with --steps")
        need(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        need(self.adam_eps > 0, "adam_eps", f"must be positive (it keeps a zero gradient's update from being 0/0), "
             f"got {self.adam_eps}")
        need(0 <= self.decay_frac <= 1, "decay_frac", f"must be in [0, 1], got {self.decay_frac}")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("weight_decay", "grad_clip", "mtp_weight", "bias_update_gamma", "aux_loss_alpha", "peak_flops"):
            need(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2", "muon_momentum"):
            need(0 <= getattr(self, name) < 1, name, f"must be in [0, 1), got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            if f.metadata.get("choices"):
                need(getattr(self, f.name) in f.metadata["choices"], f.name,
                     f"must be one of {', '.join(f.metadata['choices'])}, got {getattr(self, f.name)!r}")
        return self

    @property
    def warmup(self) -> int:
        """The warm-up steps in effect: --warmup-steps, or the default that scales with --steps (2%, 1..20)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(20, max(1, round(0.02 * self.steps)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Settings that fix what the saved optimizer and data state mean: a resumed run must keep them. (The batch
# size may change: the loader position counts windows, so a batch-size ramp or another world size is fine.)
FIXED_ON_RESUME = ("optimizer", "seq_len", "seed")


def merge_for_resume(saved: dict[str, Any], given: dict[str, Any], cls=TrainConfig
                     ) -> tuple[TrainConfig, dict[str, tuple]]:
    """The saved run's config (a TrainConfig, or a stage's subclass: cls) with the flags given now applied on top.

    Returns (config, changes {field: (old, new)}). Changing a field in cls.FIXED_ON_RESUME raises ValueError.
    """
    base = cls.from_dict(saved)
    changes = {k: (getattr(base, k), v) for k, v in given.items() if hasattr(base, k) and getattr(base, k) != v}
    fixed = [k for k in changes if k in getattr(cls, "FIXED_ON_RESUME", FIXED_ON_RESUME)]
    if fixed:
        desc = ", ".join(f"--{k.replace('_', '-')} {changes[k][0]} -> {changes[k][1]}" for k in fixed)
        raise ValueError(f"cannot change {desc} when resuming (the saved optimizer/data state depends on it); "
                         "drop the flag or start a new run with a new --out")
    return dataclasses.replace(base, **{k: v for k, (_, v) in changes.items()}).validate(), changes


# ---- argparse ---------------------------------------------------------------------------------------------
def add_config_args(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """One flag per field. Defaults are SUPPRESSed so the parsed namespace holds only the flags the user gave
    (a resumed run applies just those); `config_from_args` fills in the rest from the dataclass."""
    group = parser.add_argument_group("training settings")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "") + ("" if f.default is None else f" (default: {f.default})")
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if f.type in (bool, "bool"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        typ = {"int": int, "float": float, "str": str, "int | None": int, "str | None": str,
               "float | None": float}.get(f.type, f.type) \
            if isinstance(f.type, str) else f.type
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if typ is str and f.name == "dtype":
            kw.pop("choices")
            kw["type"] = _dtype_name
            kw["metavar"] = "{bfloat16,float32}"
        else:
            kw["type"] = typ
        group.add_argument(flag, **kw)


def _dtype_name(s: str) -> str:
    aliases = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32"}
    if s not in aliases:
        raise argparse.ArgumentTypeError(f"must be bfloat16 (bf16) or float32 (fp32), got {s!r}")
    return aliases[s]


def given_settings(args: argparse.Namespace, cls=TrainConfig) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace, cls=TrainConfig) -> TrainConfig:
    return cls(**given_settings(args, cls)).validate()
