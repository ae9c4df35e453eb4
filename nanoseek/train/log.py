"""The run's JSONL log: one object per event with `event`, `step`, `time` (unix seconds) and named metrics.

Events: "start" (settings), "train" (per step), "eval", "checkpoint", "resume", "end". On resume the records
past the checkpoint's step are dropped (atomically rewriting the file) so the log reads as one run. A new
run never overwrites a log it finds (one killed before its first checkpoint): `keep_aside` renames it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from nanoseek.io import atomic_write_text

LOG_NAME = "log.jsonl"


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record (a line cut short by a killed process is skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _clean(v: Any) -> Any:
    # JSON has no NaN/inf: write them as strings so the record stays parseable and the value visible.
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def keep_aside(run_dir: str | Path) -> Path | None:
    """Rename an existing RUN/log.jsonl to the first free RUN/log.N.jsonl; returns the new path (None: no log).

    A new run in a folder holding only a log (its run was killed before the first checkpoint, so there is
    nothing to resume) keeps that log as evidence instead of truncating it: what it recorded (a loss that
    blew up, the settings used) is often why the run was stopped.
    """
    path = Path(run_dir) / LOG_NAME
    if not path.exists():
        return None
    n = 1
    while (dest := path.with_name(f"log.{n}.jsonl")).exists():
        n += 1
    path.rename(dest)
    return dest


class RunLog:
    """Appends records to RUN/log.jsonl, flushed per line so a killed run keeps everything it logged."""

    def __init__(self, run_dir: str | Path, truncate_after_step: int | None = None):
        self.path = Path(run_dir) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            kept = [r for r in read_log(self.path) if int(r.get("step", 0)) <= truncate_after_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, event: str, step: int, **metrics: Any) -> dict[str, Any]:
        rec = {"event": event, "step": step, "time": time.time(), **_clean(metrics)}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        return rec

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
