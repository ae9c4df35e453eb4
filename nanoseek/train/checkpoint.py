"""Training checkpoints: a Hugging Face model directory plus the state that resuming needs.

    RUN/checkpoints/step_0000100/
        config.json, model.safetensors      the model (nanoseek.hf layout: engine, export and HF load it as is)
        tokenizer.json, ...                 the tokenizer the run trained with
        train_state/
            state.json                      format version, step, train config, per-rank data and RNG state
            optimizer.safetensors           optimizer tensors, keyed by parameter name (FSDP: gathered)
            rng.safetensors                 torch / cuda generator states, per rank
    RUN/checkpoints/latest                  the name of the newest complete checkpoint (written last)

A checkpoint is written into a temporary sibling and renamed into place (`nanoseek.io.atomic_dir`), then
`latest` is replaced atomically: a crash at any moment leaves the previous checkpoint and pointer intact.
No pickle anywhere: tensors in safetensors, everything else JSON.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nanoseek.hf import CheckpointError
from nanoseek.io import atomic_dir, atomic_write_text, clean_stale

FORMAT_VERSION = 1
STATE_DIR = "train_state"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# ---- RNG --------------------------------------------------------------------------------------------------
def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This process's generators: (JSON-able numpy/python states, torch/cuda state tensors)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    js = {"numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
          "python": [py_state[0], list(py_state[1]), py_state[2]]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return js, tensors


def restore_rng(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    n = js["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = js["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# ---- optimizer state <-> files ----------------------------------------------------------------------------
def _optimizer_to_files(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A name-keyed optimizer state dict (torch.distributed.checkpoint.state_dict layout) -> (tensors, JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for pname, st in osd["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pname}/{key}"] = v.detach().to("cpu").contiguous()
            else:
                values.setdefault(pname, {})[key] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    return tensors, {"values": values, "param_groups": groups}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        pname, key = name.rsplit("/", 1)
        state.setdefault(pname, {})[key] = t
    for pname, vals in meta["values"].items():
        state.setdefault(pname, {}).update(vals)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---- save -------------------------------------------------------------------------------------------------
def save_checkpoint(run_dir: str | Path, step: int, *, write_model: Callable[[Path], None],
                    optimizer_state: dict[str, Any], state: dict[str, Any], rng_tensors: list[dict[str, torch.Tensor]],
                    write_extra: Callable[[Path], None] | None = None, keep_last: int = 3) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, then delete all but the newest keep_last.

    state: JSON-able (step, config, per-rank task/RNG state); rng_tensors: one dict per rank.
    """
    root = checkpoints_dir(run_dir)
    path = root / step_dir_name(step)
    with atomic_dir(path) as tmp:
        write_model(tmp)
        if write_extra is not None:
            write_extra(tmp)
        sd = tmp / STATE_DIR
        sd.mkdir()
        opt_tensors, opt_meta = _optimizer_to_files(optimizer_state)
        save_file(opt_tensors, str(sd / "optimizer.safetensors"), metadata={"format_version": str(FORMAT_VERSION)})
        rng = {f"rank{r}.{k}": t.contiguous() for r, d in enumerate(rng_tensors) for k, t in d.items()}
        save_file(rng, str(sd / "rng.safetensors"))
        payload = {"format_version": FORMAT_VERSION, **state, "optimizer": opt_meta}
        (sd / "state.json").write_text(json.dumps(payload) + "\n")
    atomic_write_text(root / LATEST, path.name + "\n")
    _prune(root, keep_last, keep=path.name)
    return path


def _prune(root: Path, keep_last: int, keep: str) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name)))
    for _, p in steps[:-keep_last] if keep_last > 0 else []:
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)


def saved_steps(run_dir: str | Path) -> list[Path]:
    """The complete step_* checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    done = sorted((int(m.group(1)), p) for p in root.iterdir()
                  if (m := _STEP_DIR.match(p.name)) and (p / STATE_DIR / "state.json").exists())
    return [p for _, p in done]


def clean_partial(run_dir: str | Path) -> None:
    """Remove temporary directories left by a checkpoint write that was killed midway (ours only, and only
    those no live process is writing: `nanoseek.io.clean_stale`)."""
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        targets = {m.group(1) for p in root.iterdir() if (m := re.match(r"\.(step_\d+)\.", p.name))}
        for name in targets:
            clean_stale(root / name)


# ---- load -------------------------------------------------------------------------------------------------
def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` points to (falling back to the highest complete step), or None."""
    root = checkpoints_dir(run_dir)
    pointer = root / LATEST
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if not (path / STATE_DIR / "state.json").exists():
            raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete; point it at a "
                                  f"complete step_* directory in {root} or start a new run")
        return path
    if not root.is_dir():
        return None
    done = sorted((int(m.group(1)), p) for p in root.iterdir()
                  if (m := _STEP_DIR.match(p.name)) and (p / STATE_DIR / "state.json").exists())
    return done[-1][1] if done else None


def resume_point(run_dir: str | Path, resume: bool) -> Path | None:
    """The one place that decides between a new run and a resumed one: the checkpoint a resumed run continues
    from, or None for a new run. CheckpointError when resume finds no checkpoint, or a new run would write over
    a run's checkpoints."""
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if resume and ckpt is None:
        raise CheckpointError(f"--resume: {run_dir} has no checkpoint to resume from; drop --resume to start a new "
                              "run", param="--resume")
    if not resume and ckpt is not None:
        raise CheckpointError(f"--out {run_dir} already holds a training run ({ckpt.name}); pass --resume to "
                              "continue it, or choose a new --out", param="--out")
    return ckpt


def saved_train_config(ckpt: str | Path) -> dict[str, Any]:
    """The TrainConfig fields a checkpoint was written with (reads only state.json)."""
    state_file = Path(ckpt) / STATE_DIR / "state.json"
    try:
        return json.loads(state_file.read_text())["train_config"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"cannot read the training settings from {state_file} ({e}); resume from an older "
                              "checkpoint") from e


@dataclass
class TrainState:
    path: Path
    step: int
    world_size: int
    train_config: dict[str, Any]
    state: dict[str, Any]  # the whole state.json (task state, RNG, counters)
    optimizer_state: dict[str, Any]
    rng_tensors: list[dict[str, torch.Tensor]]


def load_train_state(ckpt: str | Path) -> TrainState:
    ckpt = Path(ckpt)
    sd = ckpt / STATE_DIR
    state_file = sd / "state.json"
    if not state_file.exists():
        raise CheckpointError(f"{ckpt} has no {STATE_DIR}/state.json: it is a model directory, not a resumable "
                              "training checkpoint")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{state_file} is corrupt ({e}); resume from an older checkpoint") from e
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{state_file} has format version {state.get('format_version')}, this nanoseek "
                              f"reads version {FORMAT_VERSION}")
    try:
        opt_tensors = load_file(str(sd / "optimizer.safetensors"))
        rng_flat = load_file(str(sd / "rng.safetensors"))
    except Exception as e:  # safetensors raises its own error types for missing/corrupt files
        raise CheckpointError(f"cannot read the training state in {sd}: {e}; resume from an older checkpoint") from e
    world = int(state["world_size"])
    rng = [{k.split(".", 1)[1]: t for k, t in rng_flat.items() if k.startswith(f"rank{r}.")} for r in range(world)]
    return TrainState(path=ckpt, step=int(state["step"]), world_size=world, train_config=state["train_config"],
                      state=state, optimizer_state=_optimizer_from_files(opt_tensors, state["optimizer"]),
                      rng_tensors=rng)
