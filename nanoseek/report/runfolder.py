"""A run folder as the report card reads it: the speedrun's record, the training logs and checkpoints, the
task evaluations, and what each stage cost.

    run = load_run("run")          # Run: speedrun, logs, dirs, checkpoints, configs, evals, answers (by stage)
    stage_costs(run)               # [StageCost]: wall time, tokens, FLOPs, MFU per stage, in pipeline order

Missing pieces are simply absent from a Run's mappings (the report says what makes them); a file that is
there but cannot be read is a DataError naming the file (and the line, for JSONL).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoseek.config import ModelConfig
from nanoseek.cost import CPU_PRICE, HARDWARE, summarize_run
from nanoseek.data.tasks import read_jsonl
from nanoseek.errors import DataError, UserError
from nanoseek.report.balance import expert_balance
from nanoseek.speedrun import ALSO, RL_RUNS, state_problem, stages
from nanoseek.train.checkpoint import latest_checkpoint
from nanoseek.train.log import read_log

TRAINING = ("pretrain", "sft", "rl")
COMPARED = tuple(s for s in RL_RUNS if s not in TRAINING)  # GRPO runs beside the pipeline's (speedrun --also)
SAMPLED = tuple(s.removeprefix("eval_") for s in ALSO["pass-at-8"])  # evaluations sampled 8 times a problem
STAGE_NAMES = {"pretrain": "pretraining", "sft": "SFT", "rl": "RL (GRPO)", "rl_zero": "R1-Zero (GRPO from the base model)",
               "rl_random": "GRPO, random reward (control)", "sft_pass8": "SFT, 8 samples at T=1",
               "rl_pass8": "RL (GRPO), 8 samples at T=1"}


def read_json(path: Path) -> Any:
    """A JSON file's content; DataError naming the file when it is not readable JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix or delete the "
                        "file, or rerun the stage that writes it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from None


def read_run_log(path: Path) -> list[dict[str, Any]]:
    """A training log's records (nanoseek.train.log.read_log), strictly: read_log skips any line it cannot
    parse, but only the last line may be cut short (a process killed while writing it); a bad line anywhere
    else, or a record that is not an object with an "event", is a DataError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
        records = read_log(path)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the training log ({e})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    well_formed = all(isinstance(r, dict) and isinstance(r.get("event"), str) and _step_ok(r) and _config_ok(r)
                      for r in records)
    dropped = len(lines) - len(records)  # lines read_log could not parse
    if not well_formed or dropped > 1 or (dropped == 1 and _parses(lines[-1][1])):
        for i, (n, line) in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if i == len(lines) - 1:
                    continue  # cut short by a kill: read_log skips it too
                raise DataError(f"{path}:{n}: not a JSON log record ({e.msg}); the log is corrupt: remove the line, "
                                "or rerun the stage") from None
            if not (isinstance(rec, dict) and isinstance(rec.get("event"), str)):
                raise DataError(f"{path}:{n}: not a nanoseek log record (an object with an \"event\"): "
                                f"{line[:80]!r}")
            if not _step_ok(rec):
                raise DataError(f"{path}:{n}: \"step\" must be a whole number, got {json.dumps(rec['step'])[:40]}; "
                                "the log is damaged: fix the line, or rerun the stage")
            if not _config_ok(rec):
                raise DataError(f"{path}:{n}: \"config\" must be an object of the run's settings; the log is "
                                "damaged: fix the line, or rerun the stage")
    return records


def _step_ok(record: dict[str, Any]) -> bool:
    step = record.get("step", 0)
    return isinstance(step, int) and not isinstance(step, bool) and step >= 0


def _config_ok(record: dict[str, Any]) -> bool:
    return isinstance(record.get("config", {}), dict)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSONL file of objects (nanoseek.data.tasks.read_jsonl, which names the file and line of bad JSON)."""
    out = []
    for where, rec in read_jsonl(path):
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object per line")
        out.append(rec)
    return out


@dataclass
class Run:
    """What a run folder holds (each mapping only has the stages that are there)."""
    root: Path
    lone: str | None = None  # the stage of a training run directory reported on its own
    speedrun: dict[str, Any] | None = None
    logs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dirs: dict[str, Path] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)  # stage -> ModelConfig of its latest checkpoint
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> evaluate_tasks results
    eval_files: dict[str, Path] = field(default_factory=dict)
    eval_bpb: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, tuple[list[dict[str, Any]], Path]] = field(default_factory=dict)

    @functools.cached_property
    def balance(self) -> dict[str, dict[str, Any] | None]:
        """stage -> its expert balance over training (nanoseek.report.balance), None for a log without loads."""
        return {s: expert_balance(recs) for s, recs in self.logs.items()}

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    @property
    def final(self) -> str | None:
        """The last training stage with a checkpoint: the final model."""
        return next((s for s in reversed(TRAINING) if s in self.checkpoints), None)

    def stage_seconds(self, stage: str) -> float | None:
        st = ((self.speedrun or {}).get("stages") or {}).get(stage)
        v = st.get("seconds") if isinstance(st, dict) else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _stage_of_log(records: list[dict[str, Any]]) -> str:
    """Which training stage wrote a log, from its start record's settings."""
    start = next((r for r in records if r.get("event") == "start"), {})
    cfg = start.get("config", {})
    if "group_size" in cfg or "reward" in cfg:
        return "rl"
    if "val_fraction" in cfg:
        return "sft"
    return "pretrain"


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder (or a lone training run directory). UserError when it is not one; DataError naming
    the file when a file is there but cannot be read."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: give the folder `nanoseek speedrun` wrote, or a training run's "
                        "--out directory", param="RUN")
    run = Run(root=root)
    sr = root / "speedrun.json"
    if sr.is_file():
        doc = read_json(sr)
        problem = state_problem(doc)  # the check `nanoseek speedrun` makes of its own state file
        if problem is None and doc.get("machine") is not None and not isinstance(doc["machine"], dict):
            problem = '"machine" must be an object'
        if problem:
            raise DataError(f"{sr}: not a speedrun state ({problem})")
        run.speedrun = doc
    if (root / "log.jsonl").is_file():
        records = read_run_log(root / "log.jsonl")
        run.lone = _stage_of_log(records)
        run.dirs[run.lone], run.logs[run.lone] = root, records
    else:
        for stage in TRAINING + COMPARED:
            d = root / stage
            if (d / "log.jsonl").is_file():
                run.dirs[stage], run.logs[stage] = d, read_run_log(d / "log.jsonl")
            elif (d / "checkpoints").is_dir():
                run.dirs[stage] = d
    for stage, d in run.dirs.items():
        ckpt = latest_checkpoint(d)
        if ckpt is not None and (ckpt / "config.json").is_file():
            run.checkpoints[stage] = ckpt
            run.configs[stage] = ModelConfig.load(ckpt)
    ev = root / "eval"
    names = sorted(p.stem for p in ev.glob("*.json")) if ev.is_dir() else []
    for name in names:
        path = ev / f"{name}.json"
        if path.is_file():
            _read_eval(run, name, path)
    if not (run.speedrun or run.dirs or run.evals or run.eval_bpb or (root / "tokens").is_dir()
            or (root / "tokenizer").is_dir()):
        raise UserError(f"{root} holds nothing to report: no speedrun.json, no log.jsonl, no pretrain/, sft/ or rl/ "
                        "run, no eval/*.json; give the folder `nanoseek speedrun` wrote or a training run's --out "
                        "directory", param="RUN")
    return run


def _read_eval(run: Run, name: str, path: Path) -> None:
    """RUN/eval/NAME.json: evaluate_tasks' results, as they are or inside `nanoseek eval --out`'s {"tasks": ...};
    the samples from its "problems" (keep_completions) or from NAME.completions.jsonl beside it."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object (the results of nanoseek eval / evaluate_tasks)")
    res = doc if "rows" in doc else doc.get("tasks")
    if isinstance(doc.get("bpb"), dict):
        run.eval_bpb[name] = doc["bpb"]
    if res is not None:
        rows = res.get("rows") if isinstance(res, dict) else None
        if not (isinstance(rows, list) and rows and all(isinstance(r, dict) and isinstance(r.get("task"), str)
                                                        and isinstance(r.get("accuracy"), (int, float)) for r in rows)):
            raise DataError(f"{path}: no readable task rows (each with \"task\" and \"accuracy\"); rerun "
                            f"`nanoseek eval ... --out {path}`")
        for key in ("settings", "summary"):
            if key in res and not isinstance(res[key], dict):
                raise DataError(f"{path}: \"{key}\" must be an object")
        run.evals[name], run.eval_files[name] = res, path
    problems = (res or {}).get("problems", doc.get("problems"))
    samples: list[dict[str, Any]] = []
    if isinstance(problems, list):
        for p in problems:
            if not (isinstance(p, dict) and isinstance(p.get("samples"), list) and p["samples"]
                    and isinstance(p["samples"][0], dict)):
                raise DataError(f"{path}: \"problems\" entries need a non-empty \"samples\" list")
            samples.append({**{k: v for k, v in p.items() if k != "samples"}, **p["samples"][0]})
        source = path
    else:
        source = path.with_name(f"{name}.completions.jsonl")
        if source.is_file():
            samples = [r for r in _read_jsonl(source) if r.get("sample", 0) == 0]
    samples = [s for s in samples if isinstance(s.get("completion"), str) and isinstance(s.get("prompt"), str)]
    if samples:
        run.answers[name] = (samples, source)


# ---- what the stages cost --------------------------------------------------------------------------------
@dataclass
class StageCost:
    """One stage's row of the cost table (None: not known for this stage)."""
    stage: str
    wall_s: float | None
    tokens: int | None = None
    flops: float | None = None
    step_mfu: float | None = None  # while stepping (median of the logged steps), causal-attention FLOPs
    wall_mfu: float | None = None  # over the stage's wall time
    processes: int = 1
    peak: float | None = None
    peak_source: str = ""
    note: str = ""


def machine_price(run: Run) -> tuple[float, str]:
    """$ per device-hour of the machine the run used: a known GPU's table price, else a small CPU VM's."""
    machine = (run.speedrun or {}).get("machine") or {}
    names = [str(machine.get("gpu") or "")] if machine.get("device") == "cuda" else []
    names += [str(r.get("peak_source", "")) for recs in run.logs.values() for r in recs[:1]
              if r.get("event") == "start"]
    matches = sorted(((m, hw) for hw in HARDWARE.values() for m in hw.match), key=lambda x: -len(x[0]))
    for name in names:
        for m, hw in matches:
            if m and m in name:
                return hw.price, f"{hw.name} at ${hw.price:g} per GPU-hour"
    return CPU_PRICE, f"a CPU machine at ${CPU_PRICE:g} per hour (a small cloud VM)"


def stage_costs(run: Run) -> list[StageCost]:
    """A row per stage that ran (or whose outputs are here), in pipeline order."""
    present = set(((run.speedrun or {}).get("stages") or {})) | set(run.logs) | {f"eval_{s}" for s in run.evals}
    present.discard("report")  # the report being written: its time is not known yet
    pipeline = stages(tuple(ALSO))
    order = [s for s in pipeline if s in present] + sorted(present - set(pipeline))
    rows = []
    for stage in order:
        st = ((run.speedrun or {}).get("stages") or {}).get(stage)
        done = not isinstance(st, dict) or st.get("done", True) is not False
        row = StageCost(stage, run.stage_seconds(stage), note="" if done else "not finished")
        if stage in run.logs:
            log, events = run.dirs[stage] / "log.jsonl", {r["event"] for r in run.logs[stage]}
            if not events & {"start", "resume"} or "train" not in events:  # just started, or cut short
                row.note = "; ".join(x for x in (row.note, "no training step logged yet") if x)
                rows.append(row)
                continue
            try:
                s = summarize_run(run.logs[stage], run.configs.get(stage))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise DataError(f"{log}: a record has a malformed value ({e})") from None
            row.wall_s = row.wall_s if row.wall_s is not None else s.wall_s
            row.tokens, row.flops, row.step_mfu = s.tokens, s.flops, s.step_mfu
            row.wall_mfu = row.flops / (row.wall_s * s.peak) if row.wall_s and s.peak else None
            row.processes, row.peak, row.peak_source = s.world_size, s.peak, s.peak_source
            if not s.finished and done:
                row.note = "no end record (running or stopped)"
        elif stage.startswith("eval_") and stage[5:] in run.evals:
            res = run.evals[stage[5:]]
            tok = res.get("tokens") if isinstance(res.get("tokens"), dict) else {}
            row.tokens = int(sum(v for v in tok.values() if isinstance(v, (int, float)))) or None
            if row.wall_s is None and isinstance(res.get("seconds"), (int, float)):
                row.wall_s = float(res["seconds"])
            row.note = row.note or "tokens: prompts + generated"
        rows.append(row)
    return rows
