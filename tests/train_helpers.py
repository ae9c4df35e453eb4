"""Shared by the training tests: a real tokenizer + token shards built through the CLI, and log readers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nanoseek
from nanoseek.cli import main as cli
from nanoseek.train.log import read_log

REPO = Path(__file__).resolve().parents[1]


def build_data(root: Path) -> Path:
    """tokenizer train -> data prepare on a corpus cut from Python's own standard library (always present, real
    text, and unchanged by edits to nanoseek: tests that compare losses see the same data every time).

    40 documents of ~4 KB so the validation split (2 documents) holds several batches of short windows.
    """
    import argparse
    import dataclasses
    import difflib

    text = "\n".join(Path(m.__file__).read_text() for m in (argparse, dataclasses, difflib))
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(text[i * 4000:(i + 1) * 4000])
    tok = str(root / "tok")
    assert cli(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "512", "--output", tok]) == 0
    data = root / "data"
    assert cli(["data", "prepare", "--input", str(corpus), "--tokenizer", str(root / "tok"), "--output", str(data),
                "--val-docs", "2"]) == 0
    return data


def train_records(run: Path) -> list[dict]:
    return [r for r in read_log(run) if r["event"] == "train"]


def subprocess_env() -> dict[str, str]:
    # One thread per process: the test machines are small and shared, and oversubscribed OpenMP threads
    # make every step tens of times slower. Same setting in every run keeps results comparable bit for bit.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def nanoseek_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nanoseek.cli", *args]


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def dying_in_checkpoint(root: Path, step: int) -> dict[str, str]:
    """subprocess_env() for a nanoseek process that SIGKILLs itself while it writes checkpoint `step`: its files
    are in the temporary folder, not yet renamed into place (a sitecustomize.py in `root` wraps the atomic
    write; Python runs it at start-up)."""
    hook = root / f"die-in-step-{step}"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(f'''\
import contextlib, os, signal
import nanoseek.train.checkpoint as checkpoint

_atomic_dir = checkpoint.atomic_dir


@contextlib.contextmanager
def atomic_dir(path):
    with _atomic_dir(path) as tmp:
        yield tmp
        if os.path.basename(path) == "step_{step:07d}":
            os.kill(os.getpid(), signal.SIGKILL)


checkpoint.atomic_dir = atomic_dir
''')
    env = subprocess_env()
    env["PYTHONPATH"] = str(hook) + os.pathsep + env["PYTHONPATH"]
    return env
