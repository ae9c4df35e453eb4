"""What each CPU training fast path buys: one training step with each of them switched off, in one process.

Separate processes per measurement (bench_model.py) move a step's time by up to 20% between neighbouring runs
on the project's shared VM, more than a few-percent change is worth. Here one model trains, and the code
paths are switched step by step, so every variant sees the same machine moment:

* `shipped`: as nanoseek trains;
* `no causal blocks`: causal attention over the whole square (docs/performance.md §5.2);
* `loss max pass`: the head loss takes lse from each row's max logit (the path accelerators take) instead of
  reading log p(target) from its softmax (§5.3);
* `autograd rmsnorm`: RMSNorm through autograd instead of its written-out backward (§5.6);
* `none`: all three off.

A step is forward + backward + gradient clipping + fused AdamW on `cpu-small` (without MTP unless --mtp),
batch 8 x 256 random tokens; the first --warmup rounds are dropped; medians.

    python benchmarks/bench_fast_paths.py --dtype bfloat16
    python benchmarks/bench_fast_paths.py --dtype float32
    python benchmarks/bench_fast_paths.py --dtype bfloat16 --mtp

Figures (2026-11-30, AMD EPYC Zen 4, no AMX, 2 threads): docs/performance.md §3.1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def switched_off(paths: set[str]):
    """The named fast paths replaced by their plain versions for the duration."""
    from nanoseek.model import attention, layers, loss

    saved = attention.CAUSAL_BLOCKS, loss._target_logprob, layers.RMSNorm.forward
    shipped_logprob = loss._target_logprob

    def max_pass(logits, probs, target, check_on_host=None, counted=None):
        return shipped_logprob(logits, probs, target, check_on_host=False)

    def plain_norm(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight

    if "causal blocks" in paths:
        attention.CAUSAL_BLOCKS = 1 << 62
    if "max pass" in paths:
        loss._target_logprob = max_pass
    if "rmsnorm" in paths:
        layers.RMSNorm.forward = plain_norm
    try:
        yield
    finally:
        attention.CAUSAL_BLOCKS, loss._target_logprob, layers.RMSNorm.forward = saved


VARIANTS = {"shipped": set(), "no causal blocks": {"causal blocks"}, "loss max pass": {"max pass"},
            "autograd rmsnorm": {"rmsnorm"}, "none": {"causal blocks", "max pass", "rmsnorm"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--mtp", action="store_true", help="keep the preset's MTP module")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20, help="rounds of one step per variant")
    ap.add_argument("--warmup", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import nanoseek
    from nanoseek.runtime import tune_allocator

    tune_allocator()
    cfg = nanoseek.preset(args.preset)
    if not args.mtp:
        cfg.num_nextn_predict_layers = 0
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(cfg)
    model.aux_loss_alpha = 1e-4  # the training default, as the loop sets it
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(args.warmup + args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            ids = torch.randint(0, cfg.vocab_size, (8, 257), generator=gen)
            with switched_off(VARIANTS[name]):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
                    out = model(ids[:, :-1], targets=ids[:, 1:])
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - t0
            if r >= args.warmup:
                times[name].append(elapsed)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    amx = "amx_bf16" in open("/proc/cpuinfo").read()
    print(f"{cpu} (amx_bf16: {'yes' if amx else 'no'}), torch {torch.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{args.preset}{' with MTP' if args.mtp else ' without MTP'}, 8 x 256 tokens, {args.dtype}, "
          f"median of {args.rounds} steps per variant")
    shipped = statistics.median(times["shipped"])
    for name, v in times.items():
        m = statistics.median(v)
        print(f"  {name:18s} {m * 1e3:7.1f} ms   {m / shipped:5.3f}x shipped")


if __name__ == "__main__":
    main()
