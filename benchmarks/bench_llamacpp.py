"""nanoseek's engine beside llama.cpp on the same weights: decode tokens/s, batch 1 and 8, side by side.

The peer CPU users compare with. One checkpoint, the bench config (`cpu-small` without MTP: vocab 8192,
hidden 256, 4 layers, 16 routed experts top-2 + 1 shared, random weights) with a tokenizer trained on this
repository's text, is written by `nanoseek.save_model` in the Hugging Face layout and converted to GGUF (f32 and
q8_0) by llama.cpp's own `convert_hf_to_gguf.py`; llama.cpp's DeepSeek path then runs MLA over its latent cache.

    llama.cpp b1:  llama-bench -m M.gguf -p 0 -n N -d CTX -fa off,on     (decode N tokens after CTX of context)
    llama.cpp b8:  llama-batched-bench -m M.gguf -npp CTX -ntg N -npl 8   (8 sequences; its speed_tg)
    nanoseek:      Engine.load(ckpt) as `nanoseek serve` runs it by default (compiled, fp32), and eager:
                   B prompts of CTX random tokens, N new tokens each, decode tokens/s of the engine's stats

The rounds alternate the implementations so machine noise hits all alike; medians are reported.

It needs a llama.cpp source tree with the tools built (`--llama-cpp DIR`, or $LLAMA_CPP_DIR): DIR holds
convert_hf_to_gguf.py and gguf-py/, and DIR/build/bin holds llama-bench and llama-batched-bench. One way to get
it (10-40 minutes on 2 cores): the source of llama-cpp-python vendors llama.cpp,

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp && cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \\
        && cmake --build build -j2 --target llama-bench llama-batched-bench

Without it the script says what is missing and exits 0 (it is not part of the test suite). The converter
does not know this repository's tokenizer's pre-tokenizer hash; the script tells it to treat it as GPT-2's
(byte-level BPE), which changes nothing measured here (the benchmarks feed token ids). It also writes
q_lora_rank 0 for this config (no query compression), which llama.cpp's DeepSeek loader needs.

    python benchmarks/bench_llamacpp.py --llama-cpp DIR --threads 2
    python benchmarks/bench_llamacpp.py --llama-cpp DIR --threads 2 --contexts 256 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Runs llama.cpp's converter (argv: converter, its arguments) with two fixes for this model: the unknown
# pre-tokenizer is read as GPT-2's, and a model without query compression gets q_lora_rank 0, which llama.cpp's
# loader requires of every DeepSeek model but the few "lite" ones it knows by their layer count (it then loads
# the plain query projection, as it does for those).
CONVERT = """
import runpy, sys
from pathlib import Path
root = Path(sys.argv[1]).parent
sys.path[:0] = [str(root), str(root / "gguf-py")]
from conversion.base import TextModel
from conversion.deepseek import DeepseekV2Model
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
set_params = DeepseekV2Model.set_gguf_parameters
def set_gguf_parameters(self):
    set_params(self)
    if self.hparams.get("q_lora_rank") is None:
        self.gguf_writer.add_q_lora_rank(0)
DeepseekV2Model.set_gguf_parameters = set_gguf_parameters
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def find_llama(arg: str | None) -> tuple[Path, Path] | str:
    """(llama.cpp source dir, its binaries dir), or the reason it cannot run."""
    root = arg or os.environ.get("LLAMA_CPP_DIR")
    if not root:
        return "no llama.cpp given: pass --llama-cpp DIR or set LLAMA_CPP_DIR (see this script's docstring)"
    root = Path(root)
    if not (root / "convert_hf_to_gguf.py").is_file() or not (root / "gguf-py").is_dir():
        return f"{root} has no convert_hf_to_gguf.py and gguf-py/: give llama.cpp's source folder"
    bins = root / "build" / "bin"
    missing = [b for b in ("llama-bench", "llama-batched-bench") if not (bins / b).is_file()]
    if missing:
        return (f"{bins} lacks {', '.join(missing)}: build them with `cmake -B build && cmake --build build -j2 "
                "--target llama-bench llama-batched-bench` in " + str(root))
    return root, bins


def build_checkpoint(folder: Path) -> Path:
    import torch

    import nanoseek
    from nanoseek.config import preset
    from nanoseek.tokenizer import Tokenizer

    texts = [p.read_text() for p in sorted((REPO / "nanoseek").rglob("*.py")) + sorted((REPO / "docs").glob("*.md"))]
    tok = Tokenizer.train(texts, vocab_size=8192)
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("cpu-small", vocab_size=tok.vocab_size, num_nextn_predict_layers=0))
    path = folder / "cpu-small"
    nanoseek.save_model(model, path)
    tok.save(path)
    return path


def convert(root: Path, ckpt: Path, outtype: str, out: Path) -> Path:
    p = subprocess.run([sys.executable, "-c", CONVERT, str(root / "convert_hf_to_gguf.py"), str(ckpt), "--outtype",
                        outtype, "--outfile", str(out)], capture_output=True, text=True)
    if p.returncode != 0 or not out.is_file():
        raise SystemExit(f"llama.cpp's converter failed on {ckpt}:\n{p.stderr[-3000:]}")
    return out


def llama_decode(bins: Path, gguf: Path, batch: int, ctx: int, n: int, threads: int, fa: str) -> float | None:
    """llama.cpp's decode tokens/s for `batch` sequences after `ctx` tokens of context (None: it failed, and
    says why on stderr)."""
    if batch == 1:
        cmd = [str(bins / "llama-bench"), "-m", str(gguf), "-p", "0", "-n", str(n), "-d", str(ctx), "-t", str(threads),
               "-fa", fa, "-r", "1", "-o", "json"]
    else:
        cmd = [str(bins / "llama-batched-bench"), "-m", str(gguf), "-c", str(batch * (ctx + n) + 64), "-b", "2048",
               "-ub", "512", "-npp", str(ctx), "-ntg", str(n), "-npl", str(batch), "-t", str(threads), "-fa", fa,
               "--output-format", "jsonl"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    try:
        if batch == 1:
            return float(json.loads(p.stdout)[0]["avg_ts"])
        return float([json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")][-1]["speed_tg"])
    except (ValueError, IndexError, KeyError):
        tail = [line for line in p.stderr.splitlines() if "error" in line.lower() or "assert" in line.lower()][-2:]
        print(f"  failed (exit {p.returncode}): {' '.join(cmd[:1] + cmd[2:3])} ...: {' | '.join(tail)}", flush=True)
        return None


class Nanoseek:
    def __init__(self, ckpt: Path, compile: bool, max_batch: int):
        from nanoseek.engine import Engine

        t0 = time.perf_counter()
        # every prompt of a batch prefilled in one step, as the peers do, so the decode time is decode only
        self.engine = Engine.load(ckpt, compile=compile, prefix_caching=False, max_batch=max_batch,
                                  step_tokens=1 << 20, prefill_tokens=1 << 20)
        self.start_s = time.perf_counter() - t0

    def decode(self, batch: int, ctx: int, n: int, seed: int) -> float:
        import torch

        from nanoseek.engine import SamplingParams

        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(10, self.engine.config.vocab_size, (batch, ctx), generator=g).tolist()
        self.engine.generate(ids, SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True))
        st = self.engine.stats
        return st.generated_tokens / st.decode_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp", metavar="DIR", help="llama.cpp source folder with build/bin (or $LLAMA_CPP_DIR)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--contexts", type=int, nargs="+", default=[256])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    found = find_llama(args.llama_cpp)
    if isinstance(found, str):
        print(f"bench_llamacpp: skipped: {found}")
        return
    root, bins = found
    import torch

    from bench_serve import cpu_facts

    torch.set_num_threads(args.threads)
    facts = cpu_facts()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
        ckpt = build_checkpoint(Path(tmp))
        ggufs = {t: convert(root, ckpt, t, Path(tmp) / f"model-{t}.gguf") for t in ("f32", "q8_0")}
        engines = {"nanoseek default (compiled fp32)": Nanoseek(ckpt, True, max(args.batches)),
                   "nanoseek eager fp32": Nanoseek(ckpt, False, max(args.batches))}
        for name, e in engines.items():
            print(f"{name}: engine ready in {e.start_s:.1f} s", flush=True)
        peers = {f"llama.cpp {t} FA {fa}": (t, fa) for t in ggufs for fa in ("off", "on")}
        for ctx in args.contexts:
            for b in args.batches:
                figures: dict[str, list[float]] = {k: [] for k in [*engines, *peers]}
                for e in engines.values():
                    e.decode(b, min(ctx, 32), 4, seed=0)  # warm-up: first-call costs
                for rnd in range(args.rounds):
                    names = list(figures) if rnd % 2 == 0 else list(reversed(figures))
                    for name in names:
                        if name in engines:
                            figures[name].append(engines[name].decode(b, ctx, args.new_tokens, seed=rnd))
                        else:
                            t, fa = peers[name]
                            figures[name].append(llama_decode(bins, ggufs[t], b, ctx, args.new_tokens,
                                                              args.threads, fa))
                med = {k: statistics.median(v) if None not in v else None for k, v in figures.items()}
                ref = med["llama.cpp f32 FA on"] or med["llama.cpp f32 FA off"]
                print(f"\nbatch {b}, context {ctx}, {args.new_tokens} new tokens, decode tok/s (median of "
                      f"{args.rounds}; ratio to llama.cpp f32 with flash attention, else without):", flush=True)
                for k, v in med.items():
                    print(f"  {k:<34}" + ("   failed" if v is None else f"{v:9,.0f}" + (f"  ({v / ref:.2f}x)" if ref
                                                                                       else "")), flush=True)
                rows.append({"batch": b, "context": ctx, "new_tokens": args.new_tokens, "tokens_per_s": med,
                             "rounds": figures})
    facts["loadavg_after"] = os.getloadavg()
    print(f"\nCPU: {facts['cpu']} ({facts['cores']} cores), amx_bf16 "
          f"{'listed' if facts['amx_bf16'] else 'not listed'}; {args.threads} threads everywhere; torch "
          f"{torch.__version__}; llama.cpp at {root}; load average before {facts['loadavg'][0]:.2f}, after "
          f"{facts['loadavg_after'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"facts": facts, "rows": rows, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
