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

--floor adds the lower bound no glue work can beat: the matmuls alone that each layer's forward + backward
must run, at the same shapes (the MoE layer's routed blocks from its own routing of the same input, padded as
training pads them, through the same grouped GEMM; its shared expert; its fp32 router; the dense MLP's nine),
with the weights already in the compute dtype, no casts, no elementwise work, no gathers. If the MoE layer's
matmuls alone cost more than a ratio, no change outside the matmul kernels reaches it.

    python benchmarks/bench_moe.py --threads 2
    python benchmarks/bench_moe.py --threads 1 --dtype float32
    python benchmarks/bench_moe.py --threads 2 --profile
    python benchmarks/bench_moe.py --threads 2 --floor

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


def mlp_matmuls(x: torch.Tensor, width: int, dtype: torch.dtype):
    """The nine matmuls of a SwiGLU MLP's forward + backward on x [N, d] (weights and operands in dtype)."""
    N, d = x.shape
    wg, wu, wd = (torch.randn(width, d, dtype=dtype), torch.randn(width, d, dtype=dtype),
                  torch.randn(d, width, dtype=dtype))
    h, gy, gh = torch.randn(N, width, dtype=dtype), torch.randn(N, d, dtype=dtype), torch.randn(N, width, dtype=dtype)

    def run():
        x @ wg.t(), x @ wu.t(), h @ wd.t()  # forward: gate, up, down
        gy @ wd, gy.t() @ h  # down: input and weight gradients
        gh @ wg, gh.t() @ x, gh @ wu, gh.t() @ x  # gate and up: input and weight gradients
    return run


def routed_matmuls(moe, x: torch.Tensor, dtype: torch.dtype):
    """The routed experts' six grouped GEMMs (forward gate_up and down; input and weight gradients of both),
    on the blocks the layer's own routing of x gives, padded as training pads them."""
    from nanoseek.model import experts as X

    with torch.no_grad():
        weights, indices, _ = moe.gate(x.float())
    N, K = indices.shape
    counts = torch.bincount(indices.view(-1), minlength=moe.n_experts)
    expert_of = indices.view(-1)
    order = expert_of.argsort(stable=True)
    _, _, padded = X._padded_rows(order, expert_of[order], weights.view(-1)[order], counts, K)
    groups = X._Groups(padded, x.device)
    R, d = int(padded.sum()), x.shape[1]
    w13 = moe.experts.gate_up_proj.detach().to(dtype)
    w2 = moe.experts.down_proj.detach().to(dtype)
    I = w2.shape[-1]
    xs, act = torch.randn(R, d, dtype=dtype), torch.randn(R, I, dtype=dtype)
    g, gh = torch.randn(R, d, dtype=dtype), torch.randn(R, 2 * I, dtype=dtype)

    def run():
        X._block_mm(xs, w13, groups, transpose=True), X._block_mm(act, w2, groups, transpose=True)
        X._block_mm(g, w2, groups, transpose=False), X._block_weight_grads(g, act, groups, w2)
        X._block_mm(gh, w13, groups, transpose=False), X._block_weight_grads(gh, xs, groups, w13)
    return run, R / (N * K) - 1, (counts.max() / counts.float().mean()).item()


def router_matmuls(moe, x: torch.Tensor):
    """The router's three fp32 matmuls (scores, input and weight gradients)."""
    w = moe.gate.weight.detach()
    xf, gs = x.float(), torch.randn(x.shape[0], w.shape[0])

    def run():
        xf @ w.t(), gs @ w, gs.t() @ xf
    return run


def floor(cfg, moe, x: torch.Tensor, dtype_name: str, rounds: int = 3, reps: int = 30) -> None:
    dtype = getattr(torch, dtype_name)
    flat = x.detach().reshape(-1, x.shape[-1]).to(dtype)
    routed, padding, imbalance = routed_matmuls(moe, flat, dtype)
    parts = {"routed experts (grouped)": routed,
             "shared expert": mlp_matmuls(flat, cfg.n_shared_experts * cfg.moe_intermediate_size, dtype),
             "router (fp32)": router_matmuls(moe, flat),
             "dense MLP": mlp_matmuls(flat, (cfg.num_experts_per_tok + cfg.n_shared_experts)
                                      * cfg.moe_intermediate_size, dtype)}
    times = {name: [] for name in parts}
    for r in range(rounds):  # the parts alternate round by round
        for name in (list(parts) if r % 2 == 0 else list(parts)[::-1]):
            for _ in range(5):
                parts[name]()
            for _ in range(reps):
                t0 = time.perf_counter()
                parts[name]()
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    print(f"\nfloor: the matmuls alone ({dtype_name}, weights already cast; routed rows padded {padding:.1%}, "
          f"busiest expert {imbalance:.2f}x the mean load)")
    for name, m in med.items():
        print(f"  {name:26s} {m:7.2f} ms")
    moe_ms = sum(m for name, m in med.items() if name != "dense MLP")
    print(f"  MoE matmuls / dense matmuls {moe_ms / med['dense MLP']:.2f}x")


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
    ap.add_argument("--floor", action="store_true", help="also time the matmuls alone (the lower bound)")
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
    if args.floor:
        floor(cfg, moe, x, args.dtype)
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
