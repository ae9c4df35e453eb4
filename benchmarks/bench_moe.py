"""One MoE layer's forward + backward against the dense MLP of equal active FLOPs.

DeepSeekMoE buys quality per unit of compute only if a routed layer costs about what a dense layer of the
same active parameters costs. This measures exactly that, for a preset's shapes (default `cpu-small`:
hidden 256, 16 routed experts of width 256, top-2, 1 shared expert; the dense MLP of equal active FLOPs has
width (top-k + shared) x 256 = 768):

* MoE: `nanoseek.model.moe.MoE` (router, routed experts through `experts()`'s training implementation,
  shared expert, the sequence-wise balance loss as training computes it);
* dense: `nanoseek.model.layers.MLP(hidden, 768)`.

Input [batch, seq, hidden] fp32 with requires_grad (the residual stream), a fixed random output gradient,
parameter gradients accumulated as training does (set to None between steps). Timed: forward + backward
under bf16 autocast (or fp32), the two alternating step by step so machine noise hits both alike; the
first --warmup steps of each are dropped; medians. --profile prints torch.profiler's op table for each.

    python benchmarks/bench_moe.py --threads 2
    python benchmarks/bench_moe.py --threads 1 --dtype float32
    python benchmarks/bench_moe.py --threads 2 --profile

Figures: docs/performance.md §7.2 (with the CPU each was taken on).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def build(preset: str, seed: int = 0):
    import nanoseek
    from nanoseek.model.layers import MLP
    from nanoseek.model.moe import MoE

    cfg = nanoseek.preset(preset)
    torch.manual_seed(seed)
    moe = MoE(cfg)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.02)
    width = (cfg.num_experts_per_tok + cfg.n_shared_experts) * cfg.moe_intermediate_size
    dense = MLP(cfg.hidden_size, width)
    for p in dense.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return cfg, moe, dense


def step(layer, x, grad, dtype, moe: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        if moe:
            out, stats = layer(x, balance_loss=True)
        else:
            out = layer(x)
    loss = (out.float() * grad).sum()
    if moe:
        loss = loss + 1e-4 * stats.balance_loss
    loss.backward()
    elapsed = time.perf_counter() - t0
    layer.zero_grad(set_to_none=True)
    x.grad = None
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from nanoseek.runtime import tune_allocator
    tune_allocator()

    cfg, moe, dense = build(args.preset)
    x = torch.randn(args.batch, args.seq, cfg.hidden_size, requires_grad=True)
    grad = torch.randn(args.batch, args.seq, cfg.hidden_size)
    times = {"moe": [], "dense": []}
    for i in range(args.warmup + args.steps):
        for name, layer in (("moe", moe), ("dense", dense)) if i % 2 == 0 else (("dense", dense), ("moe", moe)):
            t = step(layer, x, grad, args.dtype, name == "moe")
            if i >= args.warmup:
                times[name].append(t)
    m, d = statistics.median(times["moe"]), statistics.median(times["dense"])
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    amx = "amx_bf16" in open("/proc/cpuinfo").read()
    print(f"{cpu} (amx_bf16: {'yes' if amx else 'no'}), torch {torch.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{args.preset}, {args.batch} x {args.seq} tokens, {args.dtype}, forward + backward, "
          f"median of {args.steps} steps")
    print(f"  MoE layer  {m * 1e3:7.1f} ms")
    print(f"  dense MLP  {d * 1e3:7.1f} ms   (width {dense.gate_proj.out_features})")
    print(f"  ratio      {m / d:7.2f}x")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        for name, layer in (("moe", moe), ("dense", dense)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    step(layer, x, grad, args.dtype, name == "moe")
            print(f"\n== {name} (5 steps)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
