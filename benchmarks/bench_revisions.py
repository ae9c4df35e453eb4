"""This working tree against an earlier revision, side by side: a training step and a batch of decoding.

    python benchmarks/bench_revisions.py 7172d2c --rounds 3

Each round times both trees in fresh processes, alternating, so a slower minute of a shared machine hits both.
Training: cpu-small without MTP, 8 x 256 tokens, Muon, bf16 autocast, forward + backward + optimizer step (median
of 10 after 2 warm-up steps). Decoding: cpu-small, 8 prompts of 256 tokens, 64 new tokens greedy through the
Engine (median of 3 after a warm-up). Prints each tree's median over the rounds and the ratio this / base; the
greedy tokens of both trees must agree. A refactor that should change nothing is checked with it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEASURE = r'''
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from nanoseek.config import preset
from nanoseek.engine import Engine, SamplingParams
from nanoseek.model import DeepSeekV3
from nanoseek.train.optim import build_optimizers

torch.manual_seed(0)
m = DeepSeekV3(preset("cpu-small", vocab_size=1298, num_nextn_predict_layers=0)).train()
opts = build_optimizers(m, name="muon", lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, muon_momentum=0.95)
x = torch.randint(0, 1298, (8, 256)); y = torch.randint(0, 1298, (8, 256))
steps = []
for _ in range(12):
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, targets=y)
    out.loss.backward()
    for o in opts:
        o.step(); o.zero_grad(set_to_none=True)
    steps.append(time.perf_counter() - t0)
m.eval()
engine = Engine(m)
prompt = list(range(1, 257))
decodes = []
for _ in range(4):
    t0 = time.perf_counter()
    done = engine.generate([prompt] * 8, SamplingParams(max_new_tokens=64, temperature=0))
    decodes.append(time.perf_counter() - t0)
print(json.dumps({"step": sorted(steps[2:])[5], "decode": sorted(decodes[1:])[1], "tokens": done[0].token_ids}))
'''


def measure(tree: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tree)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="the revision to compare with (a commit, tag or branch)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nanoseek-base-") as tmp:
        base = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.base], check=True)
        try:
            runs: dict[str, list[dict]] = {"this": [], "base": []}
            for r in range(args.rounds):
                for name, tree in (("this", ROOT), ("base", base)) if r % 2 == 0 else (("base", base), ("this", ROOT)):
                    runs[name].append(measure(tree))
                    print(f"round {r + 1} {name}: step {runs[name][-1]['step']:.3f} s, decode "
                          f"{runs[name][-1]['decode']:.3f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True)
    same = all(a["tokens"] == b["tokens"] for a in runs["this"] for b in runs["base"])
    for part, what in (("step", "training step (8 x 256, Muon, bf16)"), ("decode", "decode (8 x 256 + 64 greedy)")):
        this = statistics.median(x[part] for x in runs["this"])
        base_s = statistics.median(x[part] for x in runs["base"])
        print(f"{what}: this {this:.3f} s, {args.base} {base_s:.3f} s, this / base {this / base_s:.2f}")
    print(f"greedy tokens identical: {same}")


if __name__ == "__main__":
    main()
