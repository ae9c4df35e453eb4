"""`nanoseek tokenizer train`, `nanoseek data prepare` and `nanoseek data info`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from nanoseek.cli.common import UserError, nonneg_int, positive_int
from nanoseek.data.prepare import prepare
from nanoseek.data.shards import check_tokenizer, has_checksums, open_split, read_manifest, verify_checksums
from nanoseek.data.sources import BAD_FILE_POLICIES, TEXT_UNITS, Corpus, ReadOptions
from nanoseek.tokenizer import MIN_VOCAB, Tokenizer, trainable_vocab


def _add_read_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", "-i", nargs="+", action="extend", required=True, metavar="PATH",
                   help="text files, folders of them (recursive), .jsonl[.gz] or .parquet files; repeatable")
    p.add_argument("--field", default="text", help="JSONL: the field holding the text (default text)")
    p.add_argument("--column", default="text", help="Parquet: the column holding the text (default text)")
    p.add_argument("--text-unit", default="file", choices=TEXT_UNITS,
                   help="plain text files: one document per file (default), per blank-line paragraph, or per "
                        "line; paragraph/line also stream huge files")
    p.add_argument("--max-docs", type=positive_int, default=None, help="read at most this many documents")
    p.add_argument("--on-bad-file", default="error", choices=BAD_FILE_POLICIES,
                   help="text that is not UTF-8 (e.g. a Latin-1 file): error (default) stops and names the file, "
                        "skip leaves it out, replace decodes it with U+FFFD for each bad byte; either way the "
                        "count is reported")


def _read_options(args):
    return ReadOptions(field=args.field, column=args.column, text_unit=args.text_unit, max_docs=args.max_docs,
                       on_bad_file=args.on_bad_file)


def _report_bad_files(corpus_or_count, policy: str, docs: int | None = None) -> None:
    n = corpus_or_count if isinstance(corpus_or_count, int) else len(corpus_or_count.bad_files)
    if n:
        what = "left out" if policy == "skip" else "decoded with U+FFFD for the bad bytes"
        print(f"{n} file(s) held text that is not UTF-8: {what} (--on-bad-file {policy})"
              + (f"; {docs} document(s) affected" if docs else ""))


def cmd_tokenizer_train(args) -> None:
    """Train a byte-level BPE tokenizer (HF tokenizers) with nanoseek's special tokens and chat template."""
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file; give a directory")
    corpus = Corpus(args.input, _read_options(args))
    vocab = trainable_vocab(args.vocab_size, text_bytes=corpus.text_bytes_bound, min_frequency=args.min_frequency)
    if vocab < args.vocab_size:
        print(f"--vocab-size {args.vocab_size:,} is more than this corpus can yield: {corpus.text_bytes_bound:,} "
              f"bytes of text allow at most {vocab - MIN_VOCAB:,} merges at --min-frequency {args.min_frequency}; "
              f"training for at most {vocab:,}", file=sys.stderr)
    t0 = time.perf_counter()
    bar = tqdm(total=corpus.total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="reading",
               file=sys.stderr)

    def texts():
        with bar:
            for doc in corpus.documents():
                bar.update(corpus.bytes_done - bar.n)
                yield doc
        print(f"read {corpus.docs_read:,} documents; computing BPE merges ...", file=sys.stderr)

    tok = Tokenizer.train(texts(), vocab, min_frequency=args.min_frequency, max_digits=args.max_digits)
    tok.save(out)
    _report_bad_files(corpus, args.on_bad_file, corpus.bad_docs)
    note = "" if tok.vocab_size == args.vocab_size else \
        f" (asked for {args.vocab_size:,}: the corpus has no more merges above --min-frequency)"
    print(f"trained a {tok.vocab_size:,}-token tokenizer{note} on {corpus.docs_read:,} documents in "
          f"{time.perf_counter() - t0:.1f}s; fingerprint {tok.fingerprint()}")
    print(f"wrote {out}/tokenizer.json, tokenizer_config.json, special_tokens_map.json")


def cmd_data_prepare(args) -> None:
    """Tokenize a corpus into uint16/uint32 token shards with a manifest and a held-out validation split."""
    t0 = time.perf_counter()
    m = prepare(args.input, args.tokenizer, args.output, val_fraction=args.val_fraction, val_docs=args.val_docs,
                workers=args.workers, read=_read_options(args), shard_tokens=args.shard_tokens)
    dt = time.perf_counter() - t0
    tr, va = m["splits"]["train"], m["splits"]["val"]
    print(f"train: {tr['tokens']:,} tokens, {tr['documents']:,} documents, {len(tr['shards'])} shard(s); "
          f"val: {va['tokens']:,} tokens, {va['documents']:,} documents ({m['dtype']}, "
          f"{m['total_tokens'] / max(dt, 1e-9):,.0f} tokens/s)")
    print(f"validation split: {m['val_selection']['note']}")
    if m["skipped_files"]:
        print(f"skipped {m['skipped_files']} binary file(s) in input folders")
    _report_bad_files(m["bad_utf8_files"], args.on_bad_file)
    print(f"wrote {args.output} (manifest.json, train/, val/, tokenizer/)")


def cmd_data_info(args) -> None:
    """Summarise a prepared data directory and verify it: manifest, shard sizes and checksums, token ids,
    tokenizer fingerprint."""
    m = read_manifest(args.data)
    for split in m["splits"]:
        open_split(args.data, split, m)  # raises on missing or truncated shards, or ids past the vocabulary
    t0 = time.perf_counter()
    hashed = verify_checksums(args.data, m) if has_checksums(m) else None
    own = Path(args.data) / "tokenizer"
    if own.is_dir():
        check_tokenizer(m, Tokenizer.load(own), args.data)
    if args.tokenizer:
        check_tokenizer(m, Tokenizer.load(args.tokenizer), args.data)
    print(f"{args.data}: format {m['format']} v{m['version']}, {m['dtype']}, vocab {m['vocab_size']:,}, "
          f"tokenizer {m['tokenizer_fingerprint']}")
    for split, s in m["splits"].items():
        print(f"  {split:5s} {s['tokens']:>15,} tokens {s['documents']:>12,} documents {len(s['shards']):>5} shard(s)")
    if hashed is None:
        print(f"  total {m['total_tokens']:>15,} tokens {m['total_documents']:>12,} documents; shard sizes and token "
              f"ids checked")
        print(f"note: manifest format version {m['version']} records no checksums, so the shards' bytes cannot be "
              "verified; re-run `nanoseek data prepare` to add them")
    else:
        print(f"  total {m['total_tokens']:>15,} tokens {m['total_documents']:>12,} documents; shards verified "
              f"(SHA-256 of {hashed / 2**20:,.1f} MiB in {time.perf_counter() - t0:.1f}s, token ids < vocab)")


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer",
                       description="Tokenizer commands.")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    t = tsub.add_parser("train", help="train a tokenizer on text / JSONL / Parquet inputs",
                        description=cmd_tokenizer_train.__doc__)
    _add_read_args(t)
    t.add_argument("--vocab-size", type=positive_int, required=True,
                   help="target vocabulary size incl. 9 special tokens and 256 bytes (>= 265)")
    t.add_argument("--output", "-o", required=True, metavar="DIR", help="directory to write the tokenizer files to")
    t.add_argument("--min-frequency", type=positive_int, default=2,
                   help="merge only pairs seen at least this often (default 2)")
    t.add_argument("--max-digits", type=int, choices=[1, 2, 3], default=3,
                   help="longest digit run one token may hold (default 3, as GPT-4 and DeepSeek-V3; 1: a token per "
                        "digit, which helps small models with arithmetic)")
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("data", help="tokenize corpora into token shards; inspect them",
                       description="Data commands.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    d = dsub.add_parser("prepare", help="tokenize inputs into train/val token shards",
                        description=cmd_data_prepare.__doc__)
    _add_read_args(d)
    d.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory (or tokenizer.json)")
    d.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="data directory to write (an existing data directory there is replaced)")
    val = d.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=None,
                     help="share of documents held out for validation, chosen by text hash (default 0.01, at "
                          "least one document; 0 = no validation split)")
    val.add_argument("--val-docs", type=positive_int, default=None,
                     help="hold out exactly this many documents (smallest text hashes) instead")
    d.add_argument("--workers", type=nonneg_int, default=0,
                   help="tokenizer processes (default 0 = one per core, up to 8, for inputs over 64 MiB)")
    d.add_argument("--shard-tokens", type=positive_int, default=100_000_000,
                   help="tokens per shard file (default 100M)")
    d.set_defaults(func=cmd_data_prepare)

    d = dsub.add_parser("info", help="summarise and verify a prepared data directory",
                        description=cmd_data_info.__doc__)
    d.add_argument("data", metavar="DIR", help="a directory written by `nanoseek data prepare`")
    d.add_argument("--tokenizer", metavar="DIR", help="also check that this tokenizer made the shards")
    d.set_defaults(func=cmd_data_info)


