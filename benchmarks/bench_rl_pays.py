"""Does GRPO pay? The R1 story in miniature, with the controls that would expose a false gain.

From a pretrained checkpoint (a speedrun's `RUN/pretrain`, with its `RUN/data`):

1. SFT data whose solutions mix strategies (default 80% direct answers, 20% worked solutions), the same
   problems as the speedrun's SFT set; SFT with the speedrun's settings. Greedy decoding then answers directly
   almost always, and direct answers are right far less often than worked ones: RL has something to select.
2. GRPO from that SFT model on the speedrun's RL prompts, once per --seeds (the seed of the rollouts).
3. Controls: the same GRPO run with a random reward (`--reward random`: no information about correctness), and
   continued SFT on the same SFT data for the wall time the first GRPO run took (equal compute).
4. Every model answers the speedrun's 1,000 held-out test problems (200 per task, difficulty 1-3; their keys
   are in no training file, checked in code by the speedrun) and 1,000 problems one level past (difficulty 4,
   test split), greedy. Reported: accuracy with its standard error, the share of answers that were worked or
   direct and the accuracy of each, mean answer tokens; for the SFT model and the first GRPO seed also pass@8
   and maj@8 (8 samples at temperature 1) on the first --pass-at-problems test problems.
5. A bring-your-own task the speedrun never saw, as a user brings one: a problems JSONL (`{"prompt",
   "answer", "checker": "numeric"}` per line, 1,000 lines) asking for the range of three numbers ("What is the
   largest of 41, 17 and 85 minus the smallest?"), which no nanoseek generator writes; every model answers it
   greedily, so the table shows what RL did to a task it never trained on.

Every stage is a `nanoseek` command; a stage whose results exist in --out is not run again (delete them to
rerun). Prints a markdown table and writes OUT/results.json and OUT/results.md.

    python benchmarks/bench_rl_pays.py --run runs/speedrun --out runs/rl_pays

Figures: docs/post-training.md, "Does RL pay?" (the machine, the command and the table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

# the speedrun's (`cpu` preset) SFT and RL settings, except the rollout temperature (1.0: explore) and dynamic
# sampling (2 rounds)
SFT_FLAGS = ["--steps", "400", "--batch-size", "8", "--seq-len", "256", "--lr", "3e-4", "--eval-every", "100",
             "--checkpoint-every", "200", "--bias-update-rule", "proportional", "--bias-update-gamma", "0.03"]
RL_FLAGS = ["--steps", "90", "--prompts-per-step", "8", "--group-size", "8", "--max-new-tokens", "160",
            "--temperature", "1.0", "--loss-type", "dr_grpo", "--lr", "5e-5", "--batch-size", "32", "--eval-every",
            "30", "--checkpoint-every", "30", "--eval-problems", "60", "--dynamic-sampling", "2"]
TASK_NAMES = ("arithmetic", "digit_sum", "sort", "word_problem", "units")


def nanoseek(*args: str, log: Path | None = None) -> float:
    """Run a nanoseek command; returns its wall seconds."""
    t0 = time.time()
    with open(log, "w") if log else open(os.devnull, "w") as out:
        subprocess.run([sys.executable, "-m", "nanoseek.cli", *args], check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.time() - t0


def write_data(run: Path, out: Path, mix: str) -> None:
    from nanoseek.data import tasks
    from nanoseek.data.tasks import strategies
    from nanoseek.speedrun import _levels

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    sft = [p for n in TASK_NAMES
           for p in tasks.generate(n, "train", 1000, _levels(n, "1-3"), seed=1, unique=False, wording="train")]
    if not (data / "sft_mix.jsonl").exists():
        tasks.write_sft(sft, data / "sft_mix.jsonl", follow_ups=0.3, strategies=mix)
        print(f"SFT data: {len(sft):,} conversations, solutions {strategies.summary(sft, mix)}")
    if not (data / "test_d4.jsonl").exists():
        d4 = [p for n in TASK_NAMES for p in tasks.generate_up_to(n, "test", 200, 4, wording="train")]
        tasks.check_disjoint({"SFT": sft, "RL": tasks.read_problems(run / "data" / "rl.jsonl")}, {"difficulty 4": d4})
        tasks.write_problems(d4, data / "test_d4.jsonl")
    if not (data / "byo.jsonl").exists():
        write_byo(data / "byo.jsonl")


def write_byo(path: Path, n: int = 1000) -> None:
    """The bring-your-own problems: the range of three two-digit numbers, checked as a number."""
    import random

    rng, lines = random.Random(7), []
    for _ in range(n):
        a, b, c = rng.sample(range(10, 100), 3)
        lines.append(json.dumps({"prompt": f"What is the largest of {a}, {b} and {c} minus the smallest?",
                                 "answer": str(max(a, b, c) - min(a, b, c)), "checker": "numeric"}))
    path.write_text("\n".join(lines) + "\n")


def evaluate(out: Path, name: str, run: Path, pass_at: int) -> dict:
    """Greedy on the 1,000 test problems, the difficulty-4 set and the bring-your-own problems; pass@8/maj@8
    when pass_at > 0."""
    res = {}
    for label, problems in (("test", run / "data" / "test.jsonl"), ("d4", out / "data" / "test_d4.jsonl"),
                            ("byo", out / "data" / "byo.jsonl")):
        path = out / f"{name}.{label}.json"
        if not path.exists():
            nanoseek("eval", "--checkpoint", str(out / name), "--problems", str(problems), "--n", "1000",
                     "--max-tokens", "256", "--out", str(path))
        res[label] = json.loads(path.read_text())["tasks"]
    if pass_at:
        path = out / f"{name}.pass8.json"
        if not path.exists():
            nanoseek("eval", "--checkpoint", str(out / name), "--problems", str(run / "data" / "test.jsonl"), "--n",
                     str(pass_at), "--samples", "8", "--k", "1,8", "--temperature", "1", "--max-tokens", "256",
                     "--out", str(path))
        res["pass8"] = json.loads(path.read_text())["tasks"]
    return res


def train(out: Path, name: str, args: list[str]) -> float:
    """Run a training stage once; its wall seconds (kept in OUT/NAME.seconds)."""
    secs = out / f"{name}.seconds"
    if not secs.exists():
        secs.write_text(f"{nanoseek(*args, '--out', str(out / name), log=out / f'{name}.log'):.1f}\n")
    return float(secs.read_text())


def row(name: str, res: dict, seconds: float | None) -> dict:
    t, d4 = res["test"], res["d4"]
    by = {r["strategy"]: r for r in t["by_strategy"]}
    acc = t["summary"]["accuracy"]
    out = {"model": name, "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / t["summary"]["problems"]),
           "worked_share": by.get("worked", {}).get("share", 0.0),
           "worked_accuracy": by.get("worked", {}).get("accuracy"), "direct_accuracy": by.get("direct", {}).get("accuracy"),
           "mean_tokens": t["summary"]["mean_tokens"], "d4_accuracy": d4["summary"]["accuracy"],
           "byo_accuracy": res["byo"]["summary"]["accuracy"], "seconds": seconds}
    if "pass8" in res:
        s = res["pass8"]["summary"]
        out.update({"pass@1 (T=1)": s["pass@1"], "pass@8": s["pass@8"], "maj@8": s["maj@8"]})
    return out


def table(rows: list[dict]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = ["| model | held-out accuracy (± se) | worked share | worked / direct accuracy | mean tokens | "
             "difficulty 4 | your own task | pass@1 T=1 / pass@8 / maj@8 | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        wall = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        p8 = " / ".join(pct(r.get(k)) for k in ("pass@1 (T=1)", "pass@8", "maj@8")) if "pass@8" in r else "-"
        lines.append(f"| {r['model']} | {pct(r['accuracy'])} ± {100 * r['se']:.1f} | {pct(r['worked_share'])} | "
                     f"{pct(r['worked_accuracy'])} / {pct(r['direct_accuracy'])} | {r['mean_tokens']:.1f} | "
                     f"{pct(r['d4_accuracy'])} | {pct(r['byo_accuracy'])} | {p8} | {wall} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="a speedrun folder (its pretrain/ and data/)")
    ap.add_argument("--out", required=True, type=Path, help="where the runs and results go")
    ap.add_argument("--mix", default="direct=0.8,worked=0.2", help="the SFT data's strategy mix")
    ap.add_argument("--seeds", default="0,1,2", help="GRPO seeds (the headline is their mean)")
    ap.add_argument("--pass-at-problems", type=int, default=1000,
                    help="test problems for pass@8 / maj@8 (SFT and the first seed; 0: skip)")
    ap.add_argument("--no-controls", action="store_true", help="skip the random-reward and equal-compute SFT runs")
    a = ap.parse_args()
    run, out = a.run, a.out
    out.mkdir(parents=True, exist_ok=True)
    write_data(run, out, a.mix)
    rows = []
    sft_s = train(out, "sft", ["sft", "--checkpoint", str(run / "pretrain"), "--data", str(out / "data" / "sft_mix.jsonl"),
                               "--eval-problems-file", str(run / "data" / "probe.jsonl"), *SFT_FLAGS])
    rows.append(row("SFT (mixed strategies)", evaluate(out, "sft", run, a.pass_at_problems), sft_s))
    rl_args = lambda seed, *extra: ["rl", "--checkpoint", str(out / "sft"), "--problems",  # noqa: E731
                                    str(run / "data" / "rl.jsonl"), "--eval-problems-file", str(run / "data" / "val.jsonl"),
                                    *RL_FLAGS, "--seed", str(seed), *extra]
    seeds = [int(s) for s in a.seeds.split(",")]
    first_rl_s = None
    for i, seed in enumerate(seeds):
        secs = train(out, f"rl_seed{seed}", rl_args(seed))
        first_rl_s = first_rl_s or secs
        rows.append(row(f"GRPO seed {seed}", evaluate(out, f"rl_seed{seed}", run, a.pass_at_problems if i == 0 else 0),
                        secs))
    if not a.no_controls:
        secs = train(out, "rl_random", rl_args(seeds[0], "--reward", "random"))
        rows.append(row(f"GRPO, random reward (seed {seeds[0]})", evaluate(out, "rl_random", run, 0), secs))
        # continued SFT for the first GRPO run's wall time, at the SFT run's measured pace
        steps = max(1, round(first_rl_s / (sft_s / 400)))
        flags = [f if f != "400" else str(steps) for f in SFT_FLAGS]
        secs = train(out, "sft_more", ["sft", "--checkpoint", str(out / "sft"), "--data",
                                       str(out / "data" / "sft_mix.jsonl"), "--eval-problems-file",
                                       str(run / "data" / "probe.jsonl"), *flags])
        rows.append(row(f"SFT continued, equal compute ({steps} steps)", evaluate(out, "sft_more", run, 0), secs))
    rl_rows = [r for r in rows if r["model"].startswith("GRPO seed")]
    mean = sum(r["accuracy"] for r in rl_rows) / len(rl_rows)
    gain = 100 * (mean - rows[0]["accuracy"])
    md = table(rows) + (f"\nGRPO mean over {len(rl_rows)} seed(s): {100 * mean:.1f}% ({gain:+.1f} points over the SFT "
                        f"model it starts from)\n")
    print(md, end="")
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"rows": rows, "grpo_mean": mean}, indent=2) + "\n")


if __name__ == "__main__":
    main()
