"""Data pipeline throughput: `nanoseek data prepare` vs plain Hugging Face tokenization, and loader step cost.

Corpus: Python's standard library sources as JSONL (no network), cut to --mb megabytes. A vocab-8192 tokenizer
is trained on it first. Then, alternating within each round so machine noise hits all alike:
  - nanoseek prepare, 1 process (HF tokenizers' own threads inside), and with --workers processes
  - the peer: transformers `PreTrainedTokenizerFast` on the same tokenizer.json, batch-encoding the same
    documents (what `datasets.map(tokenizer)` does) plus BOS and concatenation into one uint16 array; it writes
    nothing, computes no split and no manifest, so it is the floor for "tokenize with HF"
Finally the PackedLoader's cost per `next_batch` (median over steps) on the prepared shards.

    python benchmarks/bench_data.py                  # 16 MB, 3 rounds, workers = cores
    python benchmarks/bench_data.py --mb 64 --rounds 5 --workers 4
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_corpus(path: Path, mb: float) -> int:
    root = os.path.dirname(os.__file__)
    limit, size, n = int(mb * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        for p in sorted(glob.glob(root + "/**/*.py", recursive=True)):
            if "site-packages" in p:
                continue
            try:
                text = open(p, encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            f.write(json.dumps({"text": text}) + "\n")
            size, n = size + len(text.encode()), n + 1
            if size >= limit:
                break
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=16.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    args = ap.parse_args()

    from transformers import PreTrainedTokenizerFast

    from nanoseek.data import PackedLoader, prepare
    from nanoseek.data.sources import Corpus
    from nanoseek.tokenizer import Tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench_data."))
    corpus = tmp / "corpus.jsonl"
    n_docs = make_corpus(corpus, args.mb)
    docs = list(Corpus([corpus]).documents())
    n_bytes = sum(len(d.encode()) for d in docs)
    t0 = time.perf_counter()
    tok = Tokenizer.train(docs, 8192)
    print(f"corpus: {n_docs} documents, {n_bytes / 1e6:.1f} MB; tokenizer (vocab {tok.vocab_size}) trained in "
          f"{time.perf_counter() - t0:.1f}s; cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    tok_dir = tok.save(tmp / "tok")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))

    def run_prepare(workers):
        return prepare([corpus], tok, tmp / f"data{workers}", workers=workers, progress=False)["total_tokens"]

    def run_hf():
        ids = hf(docs, add_special_tokens=False)["input_ids"]
        arr = np.concatenate([np.asarray([tok.bos_id, *x], dtype=np.uint16) for x in ids])
        return len(arr)

    impls = {"nanoseek prepare (1 process)": lambda: run_prepare(1),
             f"nanoseek prepare ({args.workers} processes)": lambda: run_prepare(args.workers),
             "HF PreTrainedTokenizerFast batch encode": run_hf}
    times: dict[str, list[float]] = {k: [] for k in impls}
    tokens = {}
    for _ in range(args.rounds):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
    assert len(set(tokens.values())) == 1, tokens  # all produce the same number of tokens
    ref = statistics.median(times["HF PreTrainedTokenizerFast batch encode"])
    print(f"\ntokenize {tokens[name]:,} tokens, median of {args.rounds} rounds:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:42s} {med:7.2f}s  {tokens[name] / med / 1e6:6.2f} M tok/s  {n_bytes / med / 1e6:6.2f} MB/s"
              f"  time vs HF {med / ref:5.2f}x")

    loader = PackedLoader(tmp / "data1", "train", args.seq, args.batch, seed=0)
    steps = []
    for _ in range(200):
        t0 = time.perf_counter()
        loader.next_batch()
        steps.append(time.perf_counter() - t0)
    print(f"\nPackedLoader.next_batch [{args.batch} x {args.seq}]: median {statistics.median(steps) * 1e3:.3f} ms "
          f"({args.batch * args.seq / statistics.median(steps) / 1e6:.0f} M tok/s)")


if __name__ == "__main__":
    main()
