"""`nanoseek cost`: what training a model costs (FLOPs, GPU-hours, days, dollars), and what a run did."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from nanoseek.cli.common import for_flag
from nanoseek.config import PRESETS, ModelConfig, preset
from nanoseek.cost import (HARDWARE, TYPICAL_MFU, cpu_hardware, flops_per_token, forward_flops, gpu_hours, hours_unit,
                           implied_mfu, lookup_hardware, on_other_hardware, part_label, peak_flops,
                           pretraining_context, read_hardware_file, summarize_run)
from nanoseek.errors import UserError
from nanoseek.model import count_params
from nanoseek.train.checkpoint import latest_checkpoint
from nanoseek.train.log import LOG_NAME, read_log
from nanoseek.units import dollars, duration, flop, parse_count, parse_fraction, pct, plural, sci, si

MAX_SEQ_LEN = 1 << 30
HW_FLAGS = {"gpu": "--gpu", "precision": "--precision"}  # the library's names of the hardware inputs
DEFAULT_CLUSTERS = (8, 256, 2048)
# Published figures to print beside ours: DeepSeek-V3 technical report, table 1 (pre-training only).
REPORTED = {("deepseek-v3", "h800"): (14.8e12, 2.664e6, "DeepSeek-V3 report, table 1: pre-training")}

HELP = """\
Counts FLOPs per token from the architecture and turns a token budget into GPU-hours, days and dollars.

  nanoseek cost --preset deepseek-v3 --tokens 14.8T --gpu h800 --mfu 0.40     GPU-hours at an MFU
  nanoseek cost --preset deepseek-v3 --tokens 14.8T --gpu h800 --gpu-hours 2.664M
                                                    the MFU a claimed figure implies (fp8 and bf16 peaks)
  nanoseek cost --checkpoint DIR --tokens 500B --mfu 40%      every GPU of the table (no --gpu)
  nanoseek cost RUN_DIR                             what a training run did, and its cost elsewhere
  nanoseek cost --preset moonlight-16b-a3b --breakdown        FLOPs per token by part

How it counts: a matmul is 2 FLOPs per multiply-add; training = 3 x forward (the backward pass computes
gradients for activations and for weights, 2 x forward). Attention is counted causal: a token of a T-long
sequence attends to (T + 1) / 2 keys on average, as the training logs count it too (logs written before
2026-12-06 counted all T keys, as nanoGPT and PaLM do; RUN_DIR reports convert them). MTP modules are counted when the config has
them: DeepSeek-V3 trained with one, so its GPU-hours include it (~4% of its FLOPs); --no-mtp leaves them out.
MFU is relative to the dense peak (vendors' "with sparsity" figures are 2x these) of --precision.
Token counts: 14.8T, 500B, 1.5M, 2e12.
"""


# ---- the pieces ---------------------------------------------------------------------------------------------

def _hardware(args, need_cpu: bool, cpu_peak: tuple[float, str] | None = None) -> dict:
    """The table with the user's overrides; the "cpu" row measured here (about a second) unless given."""
    table = dict(HARDWARE)
    if need_cpu:
        table["cpu"] = cpu_hardware(*(cpu_peak or peak_flops(torch.device("cpu"), torch.bfloat16)))
    if args.hardware_file:
        with for_flag("--hardware-file"):
            table = read_hardware_file(table, args.hardware_file, keep_cpu=need_cpu)
    return table


def _print_model(cfg, source: str, seq_len: int, seq_note: str, mtp: bool, breakdown: bool):
    pc = count_params(cfg)
    D = cfg.num_nextn_predict_layers
    mtp_note = ((f", {D} MTP module{'s' * (D > 1)} counted (trained with the model; --no-mtp drops it)" if mtp
                 else f", {D} MTP module{'s' * (D > 1)} not counted (--no-mtp)") if D else "")
    print(f"model: {source}: {si(pc.active)} active of {si(pc.total)} parameters{mtp_note}")
    f = flops_per_token(cfg, seq_len, causal=True, mtp=mtp)
    print(f"training FLOPs per token: {flop(f.total)} = 3 x {flop(f.total / 3)} forward "
          f"(context {seq_len:,}: {seq_note})")
    print(f"  weights {flop(f.weights)}, attention {flop(f.attention)} (causal), output head {flop(f.head)}"
          + (f", MTP {flop(f.mtp)}" if f.mtp else ""))
    if breakdown:
        parts = forward_flops(cfg, seq_len, causal=True, mtp=mtp)
        total = sum(parts.values())
        print(f"\n{'forward FLOPs per token':<46}{'':>10}{'share':>8}")
        for k, v in parts.items():
            if v:
                print(f"  {part_label(cfg, k, seq_len):<44}{flop(v):>10}{pct(v / total):>8}")
        print(f"  {'total (training: 3x)':<44}{flop(total):>10}{'100%':>8}\n")
    return f


def _report_estimate(args, cfg, source: str) -> None:
    seq_len, seq_note = (args.seq_len, "--seq-len") if args.seq_len else pretraining_context(cfg)
    if args.tokens is None:
        if args.mfu or args.gpu_hours:
            raise UserError("--mfu and --gpu-hours need --tokens (the token budget, e.g. 14.8T)", param="--tokens")
        _print_model(cfg, source, seq_len, seq_note, not args.no_mtp, args.breakdown)
        print("give --tokens N (and --mfu M or --gpu-hours H) for GPU-hours and dollars")
        return
    tokens = parse_count(args.tokens, "--tokens")
    if (args.mfu is None) == (args.gpu_hours is None):
        raise UserError("give exactly one of --mfu M (the MFU to assume) or --gpu-hours H (a claimed figure, to "
                        f"find the MFU it implies); typical for large runs: --mfu {TYPICAL_MFU:g}",
                        param="--mfu" if args.mfu is None else "--gpu-hours")
    mfu = parse_fraction(args.mfu, "--mfu") if args.mfu is not None else None
    claimed = parse_count(args.gpu_hours, "--gpu-hours", integer=False) if args.gpu_hours is not None else None
    if claimed is not None and not args.gpu:
        raise UserError("--gpu-hours needs --gpu (the hardware the claimed hours were spent on)", param="--gpu")
    table = _hardware(args, need_cpu=not args.gpu or args.gpu.lower() == "cpu")
    if args.gpu and mfu is not None:
        with for_flag(HW_FLAGS):  # fails before printing anything
            lookup_hardware(table, args.gpu)[1].dense_peak(args.precision)
    f = _print_model(cfg, source, seq_len, seq_note, not args.no_mtp, args.breakdown)
    flops = f.total * tokens
    print(f"tokens: {si(tokens)} -> {sci(flops)} training FLOPs")

    if not args.gpu:  # one row per hardware at this MFU
        print(f"\nat {pct(mfu)} MFU of each {args.precision} dense peak ($ at "
              + ("the table's prices" if args.price is None else f"${args.price:g} per hour") + "):")
        print(f"  {'hardware':<11}{'peak/s':>11}{'GPU-hours':>11}{'$':>9}   days on " +
              " / ".join(f"{n:,}" for n in DEFAULT_CLUSTERS))
        for row in on_other_hardware(flops, (mfu,), table, precision=args.precision, price=args.price):
            (h,) = row.hours
            if h is None:
                print(f"  {row.key:<11}{'-':>11}   (no {args.precision} peak)")
                continue
            print(f"  {row.key:<11}{flop(row.peak):>11}{si(h):>11}{dollars(h * row.price):>9}   "
                  + " / ".join(duration(h * 3600 / n) for n in DEFAULT_CLUSTERS))
        print("choose one with --gpu NAME for days on your cluster (--gpus N) and your price (--price)")
        return

    with for_flag(HW_FLAGS):
        key, hw = lookup_hardware(table, args.gpu)
    price = hw.price if args.price is None else args.price
    print(f"hardware: {hw.name}: dense peak {flop(hw.bf16)}/s bf16"
          + (f", {flop(hw.fp8)}/s fp8" if hw.fp8 else ", no fp8") + f"; ${price:g} per GPU-hour"
          + (" (--price)" if args.price is not None else ""))
    if claimed is not None:
        hours = claimed
        shown = f"{hours:,.0f}" if hours >= 1000 else f"{hours:.3g}"
        print(f"\nclaimed: {shown} GPU-hours ({si(hours / tokens * 1e12)} per trillion tokens)")
        print(f"  achieved: {flop(flops / (hours * 3600))}/s per GPU")
        for prec in ("fp8", "bf16"):
            if hw.peak(prec):
                m = implied_mfu(flops, hours, hw.peak(prec))
                print(f"  implied MFU: {pct(m)} of the {prec} dense peak"
                      + (" (over 100%: impossible for this many FLOPs)" if m > 1 else ""))
    else:
        with for_flag(HW_FLAGS):
            peak = hw.dense_peak(args.precision)
        hours = gpu_hours(flops, mfu, peak)
        other = [f"= {pct(mfu * peak / hw.peak(p))} of the {p} peak" for p in ("bf16", "fp8")
                 if p != args.precision and hw.peak(p)]
        print(f"\nat MFU {pct(mfu)} of the {args.precision} dense peak" + (f" ({other[0]})" if other else "")
              + f": {si(mfu * peak * 3600 / f.total)} tokens per GPU-hour")
        also = si(hours) if hours >= 1000 else f"{hours * 3600:.3g} GPU-seconds" if hours < 1 else ""
        print(f"  GPU-hours: {hours:,.0f}" if hours >= 1000 else f"  GPU-hours: {hours:.3g}",
              f"({also + '; ' if also else ''}{si(hours / tokens * 1e12)} per trillion tokens)")
    print(f"  cost: {dollars(hours * price)} at ${price:g} per GPU-hour")
    clusters = [args.gpus] if args.gpus else DEFAULT_CLUSTERS
    print("  wall time: " + ", ".join(f"{duration(hours * 3600 / n)} on {n:,} GPUs" for n in clusters)
          + ("" if args.gpus else " (--gpus N for yours)"))
    ref = REPORTED.get((args.preset, key)) if not args.checkpoint else None
    if ref and ref[0] == tokens and claimed is None:
        print(f"  reported: {ref[1]:,.0f} GPU-hours ({ref[2]}): ours is {100 * (hours / ref[1] - 1):+.1f}%")


def _report_run(args) -> None:
    run = Path(args.run)
    if not (run / LOG_NAME).is_file():
        hint = (" it holds a config.json: for a model directory use --checkpoint DIR --tokens N"
                if (run / "config.json").is_file() else " give the --out directory of a training run")
        raise UserError(f"RUN_DIR {run} has no {LOG_NAME};{hint}", param="RUN_DIR")
    try:
        ckpt = latest_checkpoint(run)
    except UserError:
        ckpt = None
    cfg = ModelConfig.load(ckpt) if ckpt is not None and (ckpt / "config.json").is_file() else None
    try:
        s = summarize_run(read_log(run), cfg)
    except ValueError as e:
        raise UserError(f"cannot read {run / LOG_NAME}: {e}", param="RUN_DIR") from None
    typical = parse_fraction(args.mfu, "--mfu") if args.mfu else TYPICAL_MFU
    state = "finished" if s.finished else "no end record (still running, or stopped)"
    print(f"run {run}: {s.steps:,} steps, {state}" + (f", resumed {s.resumes}x" if s.resumes else ""))
    procs = plural(s.world_size, 'process', 'processes')
    if cfg is not None:
        pc = count_params(cfg)
        print(f"model: {ckpt.relative_to(run)}: {si(pc.active)} active of {si(pc.total)} parameters, "
              f"{plural(cfg.num_nextn_predict_layers, 'MTP module')}; seq_len {s.seq_len:,}, {s.dtype}, {procs}")
    else:
        print(f"model: no checkpoint config yet; seq_len {s.seq_len}, {s.dtype}, {procs}")
    print(f"tokens trained: {s.tokens:,} ({si(s.tokens)})")
    print(f"training FLOPs: {sci(s.flops)} = {si(s.tokens)} tokens x {flop(s.flops_per_token)} ({s.counted})")
    print(f"wall time: {duration(s.wall_s)} (start to last record, evaluation and checkpoints included); "
          f"{s.wall_s * s.world_size / 3600:.3g} device-hours")
    print(f"throughput: {s.step_tokens_per_s:,.0f} tokens/s while stepping (median of logged steps)")
    print(f"peak: {flop(s.peak)}/s ({s.peak_source}" + (f", {s.world_size} processes together" if s.world_size > 1
                                                          else "") + ")")
    print(f"measured MFU: {pct(s.step_mfu)} while stepping (median), {pct(s.wall_mfu)} over the wall time")

    # A run on this CPU gives the "cpu" row its own measured peak, so that row at its MFU is the run itself.
    on_cpu = "measured" in s.peak_source and s.peak > 0
    table = _hardware(args, need_cpu=True, cpu_peak=(s.peak / s.world_size, f"this run's {s.peak_source}")
                      if on_cpu else None)
    with for_flag(HW_FLAGS):
        table = dict([lookup_hardware(table, args.gpu)]) if args.gpu else table
    rows = on_other_hardware(s.flops, (s.step_mfu or None, typical), table, precision=args.precision,
                             price=args.price)
    unit, per_hour = hours_unit(rows)
    print(f"\nthe same {si(s.tokens)} tokens on other hardware, at this run's MFU ({pct(s.step_mfu)}) and at a typical "
          f"large-run MFU ({pct(typical)}; --mfu to change), {args.precision} dense peaks:")
    print(f"  {'':<22}{'at ' + pct(s.step_mfu):>21}{'at ' + pct(typical):>21}")
    print(f"  {'hardware':<11}{'peak/s':>11}{unit:>12}{'$':>9}{unit:>12}{'$':>9}")
    for row in rows:
        a, b = row.hours
        if a is None:
            print(f"  {row.key:<11}{'-':>11}")
            continue
        print(f"  {row.key:<11}{flop(row.peak):>11}{si(a * per_hour):>12}{dollars(a * row.price):>9}"
              f"{si(b * per_hour):>12}{dollars(b * row.price):>9}")
    if on_cpu:
        print("note: MFU measured on a CPU does not carry over to a GPU, where a small model's matmuls leave most "
              "of the chip idle; the typical column assumes a model large enough to fill it")


def cmd_cost(args) -> None:
    """GPU-hours, days and dollars to train a model on a token budget; or what a run's log says it did."""
    if args.gpus is not None and args.gpus <= 0:
        raise UserError(f"--gpus must be a positive integer, got {args.gpus}", param="--gpus")
    if args.price is not None and not (math.isfinite(args.price) and args.price >= 0):
        raise UserError(f"--price must be a number of dollars per GPU-hour >= 0, got {args.price}", param="--price")
    if args.seq_len is not None and not 1 <= args.seq_len <= MAX_SEQ_LEN:
        raise UserError(f"--seq-len must be a positive integer up to {MAX_SEQ_LEN:,}, got {args.seq_len}",
                        param="--seq-len")
    if args.list_hardware:
        table = _hardware(args, need_cpu=True)
        print(f"{'key':<11}{'bf16 dense':>12}{'fp8 dense':>11}{'$/hour':>8}  name")
        for key, hw in table.items():
            print(f"{key:<11}{flop(hw.bf16):>12}{flop(hw.fp8) if hw.fp8 else '-':>11}{hw.price:>8.2f}  {hw.name}")
        print("peaks in FLOP/s, without 2:4 sparsity; change with --hardware-file FILE "
              '(JSON: {"h800": {"price": 1.8}, "my-gpu": {"bf16": 5e14, "fp8": 1e15, "price": 3}})')
        return
    if args.gpu and args.gpu.lower() != "cpu":
        with for_flag(HW_FLAGS):  # an unknown name fails before any work
            lookup_hardware(_hardware(args, need_cpu=False), args.gpu)
    if args.run:
        if args.preset or args.checkpoint or args.tokens or args.gpu_hours:
            raise UserError("RUN_DIR reports what a run did: leave out --preset, --checkpoint, --tokens and "
                            "--gpu-hours (--mfu sets the typical MFU to compare with)", param="RUN_DIR")
        _report_run(args)
        return
    if args.preset and args.checkpoint:
        raise UserError("give either --preset or --checkpoint, not both", param="--checkpoint")
    if not (args.preset or args.checkpoint):
        raise UserError("say which model: --preset NAME, --checkpoint DIR, or a training run's RUN_DIR",
                        param="--preset")
    cfg, source = ((ModelConfig.load(args.checkpoint), f"checkpoint {args.checkpoint}") if args.checkpoint
                   else (preset(args.preset), f"preset {args.preset}"))
    _report_estimate(args, cfg, source)


def register(sub) -> None:
    p = sub.add_parser("cost", help="FLOPs, GPU-hours, days and dollars of training a model, or of a run",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", metavar="RUN_DIR", help="a training run's directory: report its log")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model shape by name")
    p.add_argument("--checkpoint", metavar="DIR", help="a model directory with config.json")
    p.add_argument("--tokens", metavar="N", help="training tokens: 14.8T, 500B, 1.5M, 2e12")
    p.add_argument("--mfu", metavar="M", help="assumed MFU, 0.4 or 40%% (with RUN_DIR: the typical one to compare "
                   "with, default 40%%)")
    p.add_argument("--gpu-hours", metavar="H", help="a claimed GPU-hour figure (e.g. 2.664M): print the MFU it implies")
    p.add_argument("--gpu", metavar="NAME", help="hardware from the table (--list-hardware): h800, h100, h200, a100, "
                   "b200, mi300x, cpu, ...; without it, every one")
    p.add_argument("--gpus", type=int, metavar="N", help="cluster size for the wall time")
    p.add_argument("--price", type=float, metavar="USD", help="$ per GPU-hour (default: the table's)")
    p.add_argument("--precision", choices=("bf16", "fp8"), default="bf16",
                   help="which dense peak --mfu is relative to (default bf16)")
    p.add_argument("--seq-len", type=int, metavar="T", help="training context for the attention FLOPs (default: "
                   "the config's pre-training context, 4096 for DeepSeek-V3)")
    p.add_argument("--no-mtp", action="store_true", help="leave the MTP modules out of the count")
    p.add_argument("--breakdown", action="store_true", help="print the forward FLOPs per token by part")
    p.add_argument("--hardware-file", metavar="FILE", help="JSON changing or adding hardware entries: "
                   '{"h800": {"price": 1.8}, "my-gpu": {"bf16": 5e14, "fp8": 1e15, "price": 3}}')
    p.add_argument("--list-hardware", action="store_true", help="print the hardware table and exit")
    p.set_defaults(func=cmd_cost)
