"""A training stage from start to end, as `nanoseek pretrain`, `sft` and `rl` each run it.

    cfg, changes, ckpt = stage_settings(out, resume, given, SFTConfig)   # a new run, or the one in `out` resumed
    run_stage(cfg, out, resume=resume, changes=changes, tokenizer=tok, build=build)

`stage_settings` is the one place that decides between a new run and a resumed one; `run_stage` sets up the
processes (one, or torchrun's), calls `build(info, say)` for the model and the task, runs the training loop and
tears the processes down again, also when training fails. Only the model and the task differ between stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from nanoseek.errors import UserError
from nanoseek.runtime import resolve_device
from nanoseek.train import distributed as D
from nanoseek.train.checkpoint import resume_point, saved_train_config
from nanoseek.train.config import TrainConfig, merge_for_resume
from nanoseek.train.loop import Task, train
from nanoseek.train.pretrain import write_tokenizer_files


def stage_settings(out: Path, resume: bool, given: dict[str, Any], cls: type[TrainConfig] = TrainConfig
                   ) -> tuple[TrainConfig, dict[str, tuple], Path | None]:
    """(settings, {field: (saved, given)} changed on resume, the run's latest checkpoint or None).

    given: the settings named on the command line. A new run takes them over the defaults of `cls`; a resumed
    run takes its checkpoint's settings with them on top. UserError when `out` is a file, when --resume finds
    no checkpoint, when a new run would overwrite one, and for any setting that fails validation."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the run", param="--out")
    ckpt = resume_point(out, resume)
    try:
        if resume:
            cfg, changes = merge_for_resume(saved_train_config(ckpt), given, cls)
        else:
            cfg, changes = cls(**given).validate(), {}
    except ValueError as e:  # a setting's validation: the message names the flag
        raise UserError(str(e)) from e
    return cfg, changes, ckpt


def run_stage(cfg: TrainConfig, out: Path, *, resume: bool, changes: dict[str, tuple], tokenizer,
              build: Callable[[D.DistInfo, Callable[..., None]], tuple[nn.Module, Task]]) -> None:
    """Train one stage: build(info, say) -> (model, task) once the processes are set up, then the loop; every
    checkpoint carries `tokenizer`. say prints on rank 0 only. TrainingDiverged (a UserError) propagates."""
    info = D.setup(resolve_device(cfg.device))
    model = task = None
    finished = False
    try:
        say = print if info.is_main else (lambda *a, **k: None)
        for k, (old, new) in changes.items():
            say(f"resume: --{k.replace('_', '-')} {old} -> {new}")
        model, task = build(info, say)
        train(model, task, cfg, out, info=info, resume=resume,
              write_extra=lambda d: write_tokenizer_files(tokenizer, d), announce=say)
        finished = True
    finally:
        model = task = None  # drop the wrapped model's references to the process group before leaving it
        D.teardown(clean=finished)
