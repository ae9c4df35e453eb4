"""Training throughput and MFU of `nanoseek pretrain`, and MoE vs dense at equal wall-clock time.

Data: no internet, so the corpus is this Python's standard library sources (*.py, tests and site-packages
left out, one document per file), run through the real pipeline: `nanoseek tokenizer train --vocab-size 8192`
and `nanoseek data prepare --val-docs 20` (cached in --workdir).

1. Throughput. The training loop itself (`nanoseek.train.train` with the pretraining task: loader,
   autocast, accumulation, clipping, AdamW, bias update, logging) on `cpu-small` (with its MTP module), on
   `cpu-small` without MTP and on `cpu-small-dense`, batch 8 x 256, in bf16 autocast and fp32. Each round
   measures the bf16 and fp32 matmul peaks (2048^2) and then runs every (model, dtype) for --steps steps, in
   an order that alternates between rounds; the first 3 steps of each run are dropped. Medians over all kept steps; MFU is model FLOPs
   (nanoseek.cost: 6 x active params + head + attention + MTP) per second over the median measured peak of
   the same dtype, on the same machine, in the same run.
2. MoE vs dense. `nanoseek pretrain` on `cpu-small`, on `cpu-small` without MTP (`--model
   num_nextn_predict_layers=0`: isolates MoE from MTP, whose extra layer and head pass cost 53% more FLOPs
   per token) and on `cpu-small-dense` (same active parameters), all with the same defaults (AdamW, lr 3e-3,
   WSD, bf16, batch 8 x 256). They run SIMULTANEOUSLY, one thread each, so machine noise hits all alike.
   A short simultaneous calibration run measures each one's step time; each then gets the number of steps
   that fits --minutes, with evaluation (20 validation batches) 10 times along the way. Reported: final
   validation loss and bits per byte, tokens, training time (sum of step times: evaluation and checkpoint
   writing excluded) and wall time, and the validation loss of each at the same training times
   (interpolated between evaluations).

    python benchmarks/bench_train.py                      # both parts: 3 rounds x 12 steps; 10 minutes each
    python benchmarks/bench_train.py --minutes 5 --rounds 2
    python benchmarks/bench_train.py --part throughput --threads 2
    python benchmarks/bench_train.py --part moe --sequential --threads 2 --minutes 5
    python benchmarks/bench_train.py --part moe --sequential --threads 2 --minutes 5 --variants moe dense

Figures: 2-core shared AMD EPYC VM (AVX-512 with bf16 dot products, no AMX), torch 2.13.0 CPU, other
engineers' jobs running (load average 2-4), commit 72a6a49. Throughput (`--part throughput`: 1 thread,
3 rounds x 9 kept steps, medians; measured peak per thread: bf16 201 GFLOP/s, fp32 88 GFLOP/s):

    model (MFLOP per trained token)        bf16 tok/s  MFU (bf16 peak)   fp32 tok/s  MFU (fp32 peak)
    cpu-small, MoE + MTP (55.2)                 1,660        46%              1,153        72%
    cpu-small, no MTP (36.0)                    2,401        43%              1,713        70%
    cpu-small-dense (35.9)                      2,452        44%              1,734        70%

bf16 autocast is 1.4x fp32 here (the bf16 matmul peak is 2.3x fp32 on this CPU).
MoE vs dense (`--part moe --minutes 8`, simultaneous, 1 thread each; the load stretched training to 7-9
minutes): final validation loss / bits per byte: MoE + MTP 5.878 / 2.071 (130 steps, 266K tokens), MoE
without MTP 5.796 / 2.042 (168 steps, 344K tokens), dense 5.656 / 1.993 (197 steps, 403K tokens); at the
same training time (331 s, all in their stable LR phase) 6.323 / 6.125 / 5.885. Run side by side, the MoE
step is slower (median 684 vs 924 tok/s without MTP), so dense wins on wall clock at this scale. An
earlier 10-minute run (model before commit dc39349) agreed: 5.122 / 5.097 / 5.001, dense ahead at every
equal-time point; per token (stable phase, interpolated) MoE without MTP and dense were within 0.05
(5.78 vs 5.73 at 400K tokens, 5.42 vs 5.45 at 600K).
Rerun 2026-11-29 06:13 on the current model (`--part moe --sequential --threads 2 --minutes 5 --variants moe
dense`, each alone, quiet machine): MoE without MTP 4,323 tok/s, 601 steps, final 4.886 (1.722 bits/byte);
dense 5,349 tok/s, 768 steps, final 4.712 (1.660); at equal training time (72 / 145 / 217 / 289 s) 5.927 /
5.389 / 5.168 / 4.886 against 5.742 / 5.276 / 5.043 / 4.758. Dense still wins. Why, per layer
(bf16 autocast, forward + backward of one MoE layer vs the dense MLP of equal active FLOPs, 8 x 256 tokens,
1 thread): 62 vs 42 ms. Matmuls 41 vs 34 ms: 96 per-expert GEMMs of ~256 rows run below the rate of 6 big
ones. Glue 20 vs 4 ms: casting 16 experts' fp32 master weights to bf16 and their gradients back (5x the
dense weights), the token gather and weighted scatter and their backward, routing. At 2 threads 44 vs 26 ms.
Rerun 2026-11-30 00:04 after the CPU attention, loss and routed-expert changes (docs/performance.md §7.1;
`--minutes 4`, same otherwise; AMD EPYC Zen 4, no AMX): MoE without MTP 4,825 tok/s, 508 steps, final 4.977
(1.754 bits/byte); dense 6,158 tok/s, 688 steps, final 4.770 (1.681); at equal training time (58 / 116 / 174
/ 232 s) 6.055 / 5.611 / 5.294 / 4.987 against 5.774 / 5.296 / 5.060 / 4.770. Dense still wins; one MoE
layer is now 1.55-1.58x the dense MLP at 2 threads (benchmarks/bench_moe.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

BATCH, SEQ = 8, 256


# ---- data ---------------------------------------------------------------------------------------------------
def prepare_data(workdir: Path) -> Path:
    data = workdir / "data"
    if (data / "manifest.json").exists():
        return data
    corpus = workdir / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    corpus.mkdir(parents=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "dist-packages", "idle_test", "__pycache__"}
    files = sorted(p for p in stdlib.rglob("*.py") if not skip & set(p.relative_to(stdlib).parts))
    for i, f in enumerate(files):
        (corpus / f"{i:05d}_{f.name}.txt").write_bytes(f.read_bytes())
    nanoseek = [sys.executable, "-m", "nanoseek.cli"]
    subprocess.run([*nanoseek, "tokenizer", "train", "--input", str(corpus), "--vocab-size", "8192",
                    "--output", str(workdir / "tok")], check=True)
    subprocess.run([*nanoseek, "data", "prepare", "--input", str(corpus), "--tokenizer", str(workdir / "tok"),
                    "--output", str(data), "--val-docs", "20"], check=True)
    return data


# ---- part 1: throughput ----------------------------------------------------------------------------------------
THROUGHPUT_MODELS = {
    "cpu-small": ("cpu-small", {}),
    "cpu-small (no MTP)": ("cpu-small", {"num_nextn_predict_layers": 0}),
    "cpu-small-dense": ("cpu-small-dense", {}),
}


def throughput(data: Path, workdir: Path, rounds: int, steps: int) -> dict:
    import nanoseek
    from nanoseek.cost import flops_per_token, measure_matmul_peak
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.train import TrainConfig, train
    from nanoseek.train.log import read_log
    from nanoseek.train.pretrain import PretrainTask

    tok = Tokenizer.load(data / "tokenizer")
    models = {name: nanoseek.preset(p, vocab_size=tok.vocab_size, **kw) for name, (p, kw) in THROUGHPUT_MODELS.items()}
    combos = [(m, d) for m in models for d in ("bfloat16", "float32")]
    peaks: dict[str, list[float]] = {"bfloat16": [], "float32": []}
    tok_s: dict[tuple, list[float]] = {c: [] for c in combos}
    fpt = {m: flops_per_token(cfg, SEQ).total for m, cfg in models.items()}
    for r in range(rounds):
        for d in peaks:
            peaks[d].append(measure_matmul_peak("cpu", getattr(torch, d)))
        for preset, dtype in (combos if r % 2 == 0 else combos[::-1]):
            cfg = TrainConfig(steps=steps, batch_size=BATCH, seq_len=SEQ, warmup_steps=1, eval_every=0, eval_batches=1,
                              checkpoint_every=0, keep_last=1, dtype=dtype, peak_flops=1.0)
            torch.manual_seed(0)
            model = nanoseek.DeepSeekV3(models[preset])
            task = PretrainTask(data, cfg, device=torch.device("cpu"), tokenizer=tok)
            run = workdir / "tp_run"
            shutil.rmtree(run, ignore_errors=True)
            train(model, task, cfg, run, progress=False, announce=lambda s: None)
            kept = [x["tokens_per_s"] for x in read_log(run) if x["event"] == "train"][3:]
            tok_s[(preset, dtype)] += kept
            print(f"round {r + 1}: {preset:24s} {dtype:9s} {statistics.median(kept):8,.0f} tok/s", flush=True)
    peak = {d: statistics.median(v) for d, v in peaks.items()}
    rows = {}
    for (preset, dtype), v in tok_s.items():
        med = statistics.median(v)
        rows[f"{preset} {dtype}"] = {"tokens_per_s": med, "mflop_per_token": fpt[preset] / 1e6,
                                     "mfu_vs_same_dtype_peak": med * fpt[preset] / peak[dtype],
                                     "mfu_vs_bf16_peak": med * fpt[preset] / peak["bfloat16"]}
    return {"peak_gflops": {d: p / 1e9 for d, p in peak.items()}, "runs": rows}


# ---- part 2: MoE vs dense ----------------------------------------------------------------------------------------
VARIANTS = {
    "cpu-small (MoE + MTP)": ["--preset", "cpu-small"],
    "cpu-small, no MTP (MoE)": ["--preset", "cpu-small", "--model", "num_nextn_predict_layers=0"],
    "cpu-small-dense": ["--preset", "cpu-small-dense"],
}
SHORT_NAMES = dict(zip(("moe-mtp", "moe", "dense"), VARIANTS))  # for --variants


def _launch(data: Path, out: Path, variant: list[str], steps: int, eval_every: int, eval_batches: int,
            threads: int = 1):
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "nanoseek.cli", "pretrain", "--data", str(data), "--out", str(out), *variant,
           "--steps", str(steps), "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--warmup-steps",
           str(min(20, steps // 10)), "--eval-every", str(eval_every), "--eval-batches", str(eval_batches),
           "--checkpoint-every", "0", "--keep-last", "1"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _run_all(data: Path, workdir: Path, steps: dict[str, int], eval_batches: int, tag: str,
             sequential_threads: int = 0) -> dict[str, Path]:
    """All variants at once, one thread each; or (sequential_threads > 0) one after another, each alone with
    that many threads, which is the fair setting on a quiet machine."""
    procs, outs = {}, {}

    def wait(name, p):
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{name} failed:\n{err[-3000:]}")

    for i, (name, variant) in enumerate(VARIANTS.items()):
        if name not in steps:
            continue
        outs[name] = workdir / f"{tag}_{i}"
        procs[name] = _launch(data, outs[name], variant, steps[name], max(1, steps[name] // 10), eval_batches,
                              sequential_threads or 1)
        if sequential_threads:
            wait(name, procs[name])
    if not sequential_threads:
        for name, p in procs.items():
            wait(name, p)
    return outs


def moe_vs_dense(data: Path, workdir: Path, minutes: float, sequential_threads: int = 0,
                 variants: list[str] | None = None) -> dict:
    from nanoseek.train.log import read_log

    names = [n for n in VARIANTS if variants is None or n in variants]
    calib = _run_all(data, workdir, {n: 25 for n in names}, 1, "calib", sequential_threads)
    step_s = {n: statistics.median(x["step_time"] for x in read_log(p) if x["event"] == "train" and x["step"] > 5)
              for n, p in calib.items()}
    # 90% of the budget for training steps; evaluations and start-up take the rest
    steps = {n: max(50, int(0.9 * minutes * 60 / s)) for n, s in step_s.items()}
    print("calibrated step times (s):", {n: round(s, 3) for n, s in step_s.items()}, "-> steps:", steps, flush=True)
    outs = _run_all(data, workdir, steps, 20, "moe", sequential_threads)
    result, curves = {}, {}
    for name, out in outs.items():
        recs = read_log(out)
        train = [x for x in recs if x["event"] == "train"]
        # time axis: training time only (sum of step times), so evaluation and checkpoint writing, which
        # differ in cost between the models, do not count against either
        clock, t = {}, 0.0
        for x in train:
            t += x["step_time"]
            clock[x["step"]] = t
        evals = [(clock[x["step"]], x["val_loss"], x["val_bpb"]) for x in recs if x["event"] == "eval"]
        end = [x for x in recs if x["event"] == "end"][0]
        curves[name] = evals
        result[name] = {"steps": steps[name], "tokens": train[-1]["tokens"], "train_s": t,
                        "wall_s": end["time"] - recs[0]["time"],
                        "final_val_loss": evals[-1][1], "final_val_bpb": evals[-1][2],
                        "median_tokens_per_s": statistics.median(x["tokens_per_s"] for x in train)}
    # validation loss of each at the same elapsed times (linear interpolation between evaluations)
    horizon = min(c[-1][0] for c in curves.values())
    grid = [horizon * f for f in (0.25, 0.5, 0.75, 1.0)]
    for name, c in curves.items():
        result[name]["val_loss_at_s"] = {f"{g:.0f}": round(_interp(c, g), 4) for g in grid}
    return result


def _interp(curve: list[tuple], t: float) -> float:
    if t <= curve[0][0]:
        return curve[0][1]
    for (t0, v0, _), (t1, v1, _) in zip(curve, curve[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return curve[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/nanoseek_bench_train", help="corpus, shards and run folders")
    ap.add_argument("--part", choices=["all", "throughput", "moe"], default="all")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the throughput part (default 1: "
                    "on a shared 2-core machine two threads are often slower)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12, help="steps per throughput run (first 3 dropped)")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of each MoE/dense run")
    ap.add_argument("--sequential", action="store_true",
                    help="MoE vs dense: run the variants one after another, each alone with --threads threads "
                         "(the fair setting on a quiet machine), instead of simultaneously with one thread each")
    ap.add_argument("--variants", nargs="+", choices=list(SHORT_NAMES),
                    help="MoE vs dense: run only these (default all): " +
                         ", ".join(f"{k} = {v}" for k, v in SHORT_NAMES.items()))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(workdir)
    report = {"torch": torch.__version__, "threads": args.threads, "batch": [BATCH, SEQ],
              "load_average_start": os.getloadavg()}
    if args.part in ("all", "throughput"):
        report["throughput"] = throughput(data, workdir, args.rounds, args.steps)
    if args.part in ("all", "moe"):
        report["moe_vs_dense"] = moe_vs_dense(data, workdir, args.minutes, args.threads if args.sequential else 0,
                                            args.variants and [SHORT_NAMES[v] for v in args.variants])
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
