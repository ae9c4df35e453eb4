"""The speedrun's pretraining recipe, chosen by measurement: variants of `nanoseek pretrain` at equal wall clock.

Data: the default speedrun's own (its tasks in their training wordings, its tokenizer and shards), made by the
speedrun's stage code into --workdir. Each variant is a set of `nanoseek pretrain` flags on top of the cpu
preset's; a short calibration run measures each one's step time, alternating variants, and each then gets the
steps that fit --minutes. Every run answers 200 held-out problems at each evaluation (the log's task_accuracy)
and its final checkpoint answers the speedrun's 1,000 held-out test problems in the plain style. Reported per
variant: steps, tokens, training minutes, accuracy +- its standard error (per task too), windowed MaxVio at
10% of the run and its 95th percentile after, and the starved expert-step share.

    python benchmarks/bench_recipe.py --minutes 11 --variants speedrun adamw
    python benchmarks/bench_recipe.py --minutes 11 --variants speedrun mtp decay0.2 sign-deepseek
    python benchmarks/bench_recipe.py --steps 1900 --variants dense       # MoE vs dense at equal tokens
    python benchmarks/bench_recipe.py --list

Figures (and the CPU they came from) are in docs/performance.md, "The speedrun's pretraining recipe".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Variants: flags on top of the cpu speedrun's own pretraining settings (its preset: Muon, proportional bias
# balancing, no MTP module, WSD decaying over the last half); "speedrun" is the preset as it is.
VARIANTS = {
    "speedrun": [],
    "adamw": ["--optimizer", "adamw"],
    "mtp": ["--model", "num_nextn_predict_layers=1"],
    "decay0.2": ["--decay-frac", "0.2"],
    "decay0.8": ["--decay-frac", "0.8"],
    "cosine": ["--schedule", "cosine"],
    "lr1e-2": ["--lr", "1e-2"],
    "lr1.5e-3": ["--lr", "1.5e-3"],
    "bs16": ["--batch-size", "16"],
    "sign-deepseek": ["--bias-update-rule", "sign", "--bias-update-gamma", "0.001"],
    "sign-0.01": ["--bias-update-rule", "sign", "--bias-update-gamma", "0.01"],
    "adamw-lr1e-2": ["--optimizer", "adamw", "--lr", "1e-2"],
    "dense": ["--preset", "cpu-small-dense"],  # the same active parameters, dense FFNs (MoE vs dense)
}


def nanoseek(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanoseek.cli", *args], cwd=ROOT, check=True, **kw)


def prepare(workdir: Path) -> dict[str, Path]:
    """The cpu speedrun's tasks, tokenizer and token shards (its own stage code), made once."""
    sys.path.insert(0, str(ROOT))
    from nanoseek import speedrun

    preset = speedrun.PRESETS["cpu"]
    paths = speedrun.run_paths(workdir)
    if not (paths["tokens"] / "manifest.json").is_file():
        speedrun.write_tasks(preset, paths)
        nanoseek(*speedrun.stage_command("tokenizer", preset, workdir))
        nanoseek(*speedrun.stage_command("tokens", preset, workdir))
    return paths


def pretrain_args(paths: dict[str, Path], out: Path, variant: str, steps: int, evals: int) -> list[str]:
    from nanoseek import speedrun

    args = speedrun.stage_command("pretrain", speedrun.PRESETS["cpu"], paths["tokens"].parent, steps=steps,
                                  eval_every=max(1, steps // evals), checkpoint_every=steps)
    args[args.index("--out") + 1] = str(out)
    return args + VARIANTS[variant]  # later flags (and a later --model of the same field) win


def step_seconds(log: Path, skip: int = 5) -> float:
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    times = sorted(r["step_time"] for r in recs if r.get("event") == "train" and r["step"] > skip)
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["speedrun", "adamw"], choices=sorted(VARIANTS))
    ap.add_argument("--minutes", type=float, default=11.0, help="training wall clock of each variant")
    ap.add_argument("--calibrate-steps", type=int, default=25)
    ap.add_argument("--steps", type=int, help="give every variant these steps (equal tokens) instead of equal time")
    ap.add_argument("--evals", type=int, default=5, help="evaluations (with the 200-problem probe) per run")
    ap.add_argument("--workdir", default="/tmp/nanoseek_bench_recipe")
    ap.add_argument("--list", action="store_true", help="print the variants and their flags")
    args = ap.parse_args()
    if args.list:
        for name, flags in VARIANTS.items():
            print(f"{name:16s} {' '.join(flags)}")
        return
    workdir = Path(args.workdir)
    paths = prepare(workdir)
    subprocess.run(["lscpu"], check=False, stdout=open(workdir / "lscpu.txt", "w"))
    # calibration: each variant a few steps, in turn, twice; the median step time of both
    step_s: dict[str, list[float]] = {v: [] for v in args.variants}
    for _ in range(0 if args.steps else 2):
        for v in args.variants:
            out = workdir / "calibrate" / v
            subprocess.run(["rm", "-rf", str(out)], check=True)
            nanoseek(*pretrain_args(paths, out, v, args.calibrate_steps, 1), "--eval-every", "0",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            step_s[v].append(step_seconds(out / "log.jsonl"))
    budget = {v: args.steps or max(1, int(args.minutes * 60 / (sum(s) / len(s)))) for v, s in step_s.items()}
    print("calibrated step times (s):", {v: [round(x, 3) for x in s] for v, s in step_s.items()}, "-> steps:", budget,
          flush=True)
    from nanoseek.report.balance import expert_balance
    from nanoseek.train.log import read_log

    rows = []
    for v in args.variants:
        out = workdir / "runs" / v
        subprocess.run(["rm", "-rf", str(out)], check=True)
        t0 = time.perf_counter()
        nanoseek(*pretrain_args(paths, out, v, budget[v], args.evals), stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        res = workdir / "runs" / f"{v}.test.json"
        nanoseek("eval", "--checkpoint", str(out), "--problems", str(paths["test"]), "--style", "plain",
                 "--max-tokens", "256", "--batch-size", "64", "--out", str(res), stdout=subprocess.DEVNULL)
        doc = json.loads(res.read_text())
        summary = (doc.get("tasks") or doc)["summary"]
        per_task = {r["task"]: r["accuracy"] for r in (doc.get("tasks") or doc)["rows"] if r["task"] != "all"}
        recs = read_log(out)
        train = [r for r in recs if r.get("event") == "train"]
        b = expert_balance(recs)
        rows.append({"variant": v, "steps": budget[v], "tokens": train[-1]["tokens"],
                     "train_min": sum(r["step_time"] for r in train) / 60, "wall_min": wall / 60,
                     "accuracy": summary["accuracy"], "se": summary["accuracy_se"], "per_task": per_task,
                     "curve": [(r["step"], r.get("task_accuracy")) for r in recs if r.get("event") == "eval"],
                     "maxvio_at_10%": b and b["at_settle"], "maxvio_p95_after": b and max(b["p95_after"]),
                     "starved": b and b["starved_share"]})
        print(json.dumps(rows[-1]), flush=True)
    (workdir / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{'variant':16s} {'steps':>6s} {'tokens':>9s} {'train min':>9s} {'accuracy':>15s} {'MaxVio@10%':>10s} "
          f"{'p95 after':>9s} {'starved':>8s}")
    for r in rows:
        print(f"{r['variant']:16s} {r['steps']:6d} {r['tokens']:9,d} {r['train_min']:9.1f} "
              f"{100 * r['accuracy']:7.1f}% ± {100 * r['se']:4.1f} {r['maxvio_at_10%'] or 0:10.2f} "
              f"{r['maxvio_p95_after'] or 0:9.2f} {100 * (r['starved'] or 0):7.1f}%")


if __name__ == "__main__":
    main()
