"""Training-step throughput and memory of nanoseek vs Hugging Face transformers' DeepseekV3ForCausalLM.

Both get the same config (the `cpu-small` preset without MTP, which HF lacks: vocab 8192, hidden 256, 4 layers
with the first dense, 8 heads, no q-lora, kv_lora 64, nope/rope/v 32/16/32, 16 routed experts top-2 + 1 shared,
expert width 256, dense width 768), the same weights, the same batches (8 x 256 tokens, a new one each step) and the same optimizer
(torch AdamW, fused). One step = forward + backward + optimizer step, losses as each library computes them
(HF: cross-entropy over its logits). Every measurement runs in a fresh worker process; workers alternate
nanoseek / HF within each round so machine noise hits both alike. We report medians over all timed steps and
their ratio, and the peak resident memory a worker adds during its steps (gradients, AdamW state, activations).

--allocator picks the glibc malloc settings of each worker:
  shipped  nanoseek as its command runs (nanoseek.runtime.tune_allocator) vs HF in a plain process (default)
  same     both tuned: the model code alone is compared
On a shared machine use --threads 1: with more threads than free cores every op waits at its OpenMP barrier
for a descheduled thread and the figures collapse.

    python benchmarks/bench_model.py --threads 1                     # default: 3 rounds x 6 steps, both precisions
    python benchmarks/bench_model.py --threads 2 --allocator same --rounds 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch


def build(impl: str, ckpt: str):
    if impl == "nanoseek":
        import nanoseek

        model = nanoseek.load_model(ckpt, dtype=torch.float32)

        def loss_fn(x, y):
            return model(x, targets=y).loss
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)

        def loss_fn(x, y):
            logits = model(input_ids=x).logits
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                            weight_decay=0.1, fused=True)
    return model, loss_fn, opt


def step(loss_fn, opt, x, y, bf16: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def worker(impl: str, ckpt: str, bf16: bool, args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if impl == "nanoseek" or args.allocator == "same":
        from nanoseek.runtime import tune_allocator

        tune_allocator()
    torch.manual_seed(0)
    _, loss_fn, opt = build(impl, ckpt)
    # a fresh batch every step, the same sequence for both: routing (and so expert shapes) varies as in training
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 8192, (args.batch, args.seq + 1), generator=gen) for _ in range(args.steps + 2)]
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample():  # peak resident memory, sampled every millisecond
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times = [step(loss_fn, opt, b[:, :-1], b[:, 1:], bf16) for b in batches]
    times = times[2:]  # warm-up: allocator, oneDNN kernel selection, optimizer state
    done.set()
    sampler.join()
    return {"times": times, "peak_mib": (peak - base) / 2**20}


def make_checkpoint(path: str) -> None:
    import nanoseek

    torch.manual_seed(0)
    cfg = nanoseek.preset("cpu-small", num_nextn_predict_layers=0)
    nanoseek.save_model(nanoseek.DeepSeekV3(cfg), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per worker")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    ap.add_argument("--allocator", choices=["shipped", "same"], default="shipped")
    ap.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        impl, ckpt, prec = args._worker
        print(json.dumps(worker(impl, ckpt, prec == "bf16", args)))
        return

    import transformers

    ckpt = tempfile.mkdtemp(prefix="bench_model_")
    make_checkpoint(ckpt)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads or 'default'}, "
          f"batch {args.batch} x {args.seq}, allocator {args.allocator}, {args.rounds} rounds x {args.steps} steps")
    tokens = args.batch * args.seq
    passthrough = ["--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
                   "--threads", str(args.threads), "--allocator", args.allocator]
    for prec in args.precisions.split(","):
        results = {"nanoseek": [], "hf": []}
        for r in range(args.rounds):
            order = ("nanoseek", "hf") if r % 2 == 0 else ("hf", "nanoseek")
            for impl in order:
                out = subprocess.run([sys.executable, __file__, *passthrough, "--_worker", impl, ckpt, prec],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"worker {impl} {prec} failed:\n{out.stderr[-3000:]}")
                results[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
        tps = {k: tokens / statistics.median([t for w in v for t in w["times"]]) for k, v in results.items()}
        mem = {k: statistics.median([w["peak_mib"] for w in v]) for k, v in results.items()}
        print(f"[{prec}] tokens/s median: nanoseek {tps['nanoseek']:,.0f}   HF {tps['hf']:,.0f}   "
              f"ratio {tps['nanoseek'] / tps['hf']:.2f}x")
        print(f"[{prec}] peak memory added by training: nanoseek {mem['nanoseek']:.0f} MiB   HF {mem['hf']:.0f} MiB")


if __name__ == "__main__":
    main()
