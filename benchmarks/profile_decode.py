"""Where a decode step's time goes: the engine's own steps under torch.profiler, one row per operation and per
compiled kernel, in microseconds per step.

    python benchmarks/profile_decode.py --threads 1 --batch 1            # the bench config, compiled (serve's default)
    python benchmarks/profile_decode.py --batch 8 --eager
    python benchmarks/profile_decode.py --checkpoint RUN/rl --context 64

Compiled steps are profiled kernel by kernel (inductor's `cpp.enable_kernel_profile`: each generated C++ kernel
appears as `graph_N_cpp_fused_...`, each library call as its aten op or `aoti_torch_cpu_...`). The profiler
adds about 2 us to every recorded call and books it as the parent's own time ("Call CompiledFxGraph"), so the
total is ~1.3x an unprofiled step: compare rows with each other, and take step times from bench_generate.py.
The checkpoint defaults to bench_generate.py's (`cpu-small` without MTP, random weights); prompts are random
tokens, decoding greedy with EOS ignored.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from nanoseek.errors import UserError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="model directory (default: the bench config with random weights)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=256, help="prompt tokens per request")
    ap.add_argument("--steps", type=int, default=100, help="decode steps profiled (after 30 unprofiled)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--eager", action="store_true", help="the eager engine instead of compiled steps")
    ap.add_argument("--rows", type=int, default=40, help="rows of the table")
    args = ap.parse_args()
    for flag in ("batch", "context", "steps"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True  # set before anything compiles
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from bench_generate import make_checkpoint

            ckpt = os.path.join(tmp, "cpu-small")
            make_checkpoint(ckpt)
        try:
            profile(args, ckpt)
        except UserError as e:  # a wrong checkpoint, a context longer than the model's: the message, not a traceback
            sys.exit(f"profile_decode.py: error: {e}")


def profile(args, ckpt: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from nanoseek.engine import Engine, SamplingParams

    # steps of any size run at once (no step-token budget), prefix cache off: the rounds repeat prompts
    eng = Engine.load(ckpt, compile=not args.eager, prefix_caching=False, speculative=0,
                      step_tokens=1 << 20, prefill_tokens=1 << 20)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, eng.config.vocab_size, (args.context,), generator=g).tolist()
               for _ in range(args.batch)]
    params = SamplingParams(max_new_tokens=2 * args.steps + 40, temperature=0, ignore_eos=True)  # all steps full
    for p in prompts:
        eng.add_request(p, params)
    for _ in range(30):  # prefill and warm steps
        eng.step()
    t = time.perf_counter()
    for _ in range(args.steps):
        eng.step()
    plain = (time.perf_counter() - t) / args.steps
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            eng.step()
    rows = sorted(((e.self_cpu_time_total / args.steps, e.count / args.steps, e.key) for e in prof.key_averages()),
                  reverse=True)
    total = sum(r[0] for r in rows)
    mode = "eager" if args.eager else "compiled"
    print(f"{mode}, batch {args.batch}, context {args.context}, {torch.get_num_threads()} threads: "
          f"{plain * 1e3:.3f} ms a step unprofiled, {total / 1e3:.3f} ms profiled")
    print(f"{'us/step':>9} {'share':>6} {'calls':>6}  operation")
    for us, calls, key in rows[:args.rows]:
        print(f"{us:9.1f} {us / total:6.1%} {calls:6.1f}  {key[:100]}")


if __name__ == "__main__":
    main()
