"""Shared by the training tests: a real tokenizer + token shards built through the CLI, log readers, and the
SIGKILL-and-resume harness (a process that kills itself at a known point, then the bit-for-bit comparison)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

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


def _with_startup_hook(root: Path, name: str, code: str) -> dict[str, str]:
    """subprocess_env() for a nanoseek process that runs `code` at start-up: a sitecustomize.py in its own folder
    under `root`, ahead on PYTHONPATH (Python imports it before anything else)."""
    hook = root / name
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(code)
    env = subprocess_env()
    env["PYTHONPATH"] = str(hook) + os.pathsep + env["PYTHONPATH"]
    return env


def dying_in_checkpoint(root: Path, step: int) -> dict[str, str]:
    """subprocess_env() for a nanoseek process that SIGKILLs itself while it writes checkpoint `step`: its files
    are in the temporary folder, not yet renamed into place (the hook wraps the atomic write)."""
    return _with_startup_hook(root, f"die-in-step-{step}", f'''\
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


def dying_after_log(root: Path, event: str, step: int | None = None, stage: str | None = None) -> dict[str, str]:
    """subprocess_env() for a nanoseek process that SIGKILLs itself right after it appends the `event` record of
    `step` (of any step if None) to a log.jsonl (only to STAGE/log.jsonl if `stage` is given, as in a speedrun's
    folder): a kill at a known point of the run, however fast or slow the machine (the hook wraps RunLog.write,
    which flushes each record before it returns)."""
    return _with_startup_hook(root, f"die-after-{stage}-{event}-{step}", f'''\
import os, signal
from nanoseek.train.log import RunLog

_write = RunLog.write


def write(self, event, step, **metrics):
    rec = _write(self, event, step, **metrics)
    if event == {event!r} and {step!r} in (None, step) and {stage!r} in (None, self.path.parent.name):
        os.kill(os.getpid(), signal.SIGKILL)
    return rec


RunLog.write = write
''')


def killed(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run cmd under one of the dying_* environments and check that it died by its SIGKILL."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    return r


def assert_resumes_bit_for_bit(args, tmp_path: Path, steps: int, kill_env: dict[str, str], train_keys, eval_keys,
                               files=("model.safetensors",), check_killed=None) -> tuple[Path, Path, str]:
    """The SIGKILL-and-resume check: `args(out, *extra)` (a nanoseek command line writing run folder `out`) runs
    whole into tmp_path/full, and into tmp_path/killed under `kill_env` (it dies part way) and then again with
    --resume. The resumed run's train records (steps 1..`steps`, `train_keys`), eval records (`eval_keys`) and
    last checkpoint's `files` equal the uninterrupted run's exactly. `check_killed(run_folder)` may check what
    the killed run left before it resumes. Returns (full, killed, the resume's stdout)."""
    full, cut = tmp_path / "full", tmp_path / "killed"
    r = run(args(full))
    assert r.returncode == 0, r.stderr[-2000:]
    killed(args(cut), kill_env)
    assert train_records(cut)[-1]["step"] < steps  # it really died mid-run
    if check_killed is not None:
        check_killed(cut)
    r = run(args(cut, "--resume"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from step_" in r.stdout

    a, b = train_records(full), train_records(cut)
    assert [x["step"] for x in b] == list(range(1, steps + 1))  # records past the checkpoint were replaced
    for key in train_keys:
        assert [x[key] for x in b] == [x[key] for x in a], key  # exactly equal, not approximately
    evals = lambda recs: [tuple(x[k] for k in ("step", *eval_keys)) for x in recs if x["event"] == "eval"]  # noqa: E731
    assert evals(read_log(cut)) == evals(read_log(full))
    for name in files:
        last = f"checkpoints/step_{steps:07d}/{name}"
        wa, wb = load_file(str(full / last)), load_file(str(cut / last))
        assert wa.keys() == wb.keys(), name
        for k in wa:
            assert (wa[k] == wb[k]).all(), (name, k)
    return full, cut, r.stdout
