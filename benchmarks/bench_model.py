"""Training-step throughput of nanoseek vs Hugging Face transformers' DeepseekV3ForCausalLM, side by side.

Both models get the same config (the `cpu-small` preset without MTP, which HF lacks: vocab 8192, hidden 256,
4 layers with the first dense, 8 heads, no q-lora, kv_lora 64, nope/rope/v 32/16/32, 16 routed experts top-2 +
1 shared, expert width 256, dense width 768) and the same weights, the same batch (8 x 256 tokens) and the
same optimizer (torch AdamW, fused). One step = forward + backward + optimizer step. The two implementations
alternate step by step within each round so machine noise hits both alike; we report medians and ratios.
Peak memory (resident-set growth during 3 steps, sampled every millisecond) is measured in a fresh
subprocess per implementation.

    python benchmarks/bench_model.py                 # default: 5 rounds x 6 steps per precision
    python benchmarks/bench_model.py --rounds 3 --steps 4 --batch 8 --seq 256
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
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


def make_checkpoint(path: str) -> None:
    import nanoseek

    torch.manual_seed(0)
    cfg = nanoseek.preset("cpu-small", num_nextn_predict_layers=0)
    nanoseek.save_model(nanoseek.DeepSeekV3(cfg), path)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_probe(impl: str, ckpt: str, bf16: bool, batch: int, seq: int) -> None:
    """Peak resident memory during 3 training steps above the resident memory before the first one
    (model loaded, optimizer built): gradients, AdamW state and the activations."""
    import threading

    from nanoseek.runtime import tune_allocator

    tune_allocator()
    torch.manual_seed(0)
    model, loss_fn, opt = build(impl, ckpt)
    x = torch.randint(0, model.config.vocab_size, (batch, seq))
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    for _ in range(3):
        step(loss_fn, opt, x, x, bf16)
    done.set()
    t.join()
    print(json.dumps({"peak_growth_mib": (peak - base) / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per implementation per round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--_probe", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._probe:
        impl, ckpt, prec = args._probe
        memory_probe(impl, ckpt, prec == "bf16", args.batch, args.seq)
        return

    import transformers

    from nanoseek.runtime import tune_allocator

    tune_allocator()  # what the nanoseek command does; HF runs in this process too, so it benefits alike
    ckpt = tempfile.mkdtemp(prefix="bench_model_")
    make_checkpoint(ckpt)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch} x {args.seq}")
    tokens = args.batch * args.seq
    results = {}
    for prec in args.precisions.split(","):
        bf16 = prec == "bf16"
        torch.manual_seed(0)
        impls = {name: build(name, ckpt) for name in ("nanoseek", "hf")}
        x = torch.randint(0, 8192, (args.batch, args.seq))
        y = torch.roll(x, -1, 1)
        times = {name: [] for name in impls}
        for name, (_, loss_fn, opt) in impls.items():  # warm-up (allocator, oneDNN kernel selection)
            for _ in range(2):
                step(loss_fn, opt, x, y, bf16)
        for _ in range(args.rounds):
            for _ in range(args.steps):
                for name, (_, loss_fn, opt) in impls.items():
                    times[name].append(step(loss_fn, opt, x, y, bf16))
        med = {name: tokens / statistics.median(t) for name, t in times.items()}
        results[prec] = med
        print(f"[{prec}] tokens/s median: nanoseek {med['nanoseek']:,.0f}   HF {med['hf']:,.0f}   "
              f"ratio {med['nanoseek'] / med['hf']:.2f}x  ({len(times['hf'])} steps each)")
        del impls
    if not args.no_memory:
        for prec in args.precisions.split(","):
            mem = {}
            for impl in ("nanoseek", "hf"):
                out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--seq", str(args.seq),
                                      "--_probe", impl, ckpt, prec], capture_output=True, text=True, check=True)
                mem[impl] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"]
            print(f"[{prec}] peak memory above the loaded model, 3 steps: nanoseek {mem['nanoseek']:.0f} MiB   "
                  f"HF {mem['hf']:.0f} MiB")


if __name__ == "__main__":
    main()
