"""Corpus -> token shards: tokenize documents (in parallel processes for big inputs) into train/val splits.

Every document becomes <|bos|> + its tokens. The held-out validation split is chosen by a hash of the
document's text, so the choice is deterministic, independent of order and worker count, and exact duplicates
always land on the same side (they cannot leak from train into val). `--val-docs N` keeps exactly the N
documents with the smallest hashes (a bounded reserve while streaming); `--val-fraction f` keeps those whose
hash falls below f, plus at least one document so a small corpus still has a validation split.

The default (neither flag) is 1% of the documents, raised where that is too little to evaluate on: to
DEFAULT_VAL_TOKENS, what one evaluation of `nanoseek pretrain` with default flags reads, but never past 10%
of the corpus's tokens. A corpus of many small files otherwise held out a couple of thousand tokens, less
than one evaluation batch. The extra documents are again the smallest hashes; the manifest's `val_selection`
says what was chosen and why.

Output is written into a temporary sibling directory and renamed into place at the end: an error or an
interrupt leaves no partial output and the previous data directory (if any) untouched.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nanoseek.errors import DataError
from nanoseek.data.shards import FORMAT, MANIFEST, SPLITS, VERSION, ShardWriter, token_dtype, write_manifest
from nanoseek.data.sources import Corpus, ReadOptions
from nanoseek.io import atomic_dir
from nanoseek.tokenizer import Tokenizer

HASH_SPACE = 1 << 64
# One evaluation of `nanoseek pretrain` with default flags: --eval-batches 20 x --batch-size 8 sequences of
# --seq-len 256 (+1 for the last target). The default validation split holds at least this much ...
DEFAULT_VAL_TOKENS = 20 * 8 * 256 + 1
DEFAULT_VAL_FRACTION = 0.01
MAX_VAL_SHARE = 0.1  # ... unless that would take more than this share of the corpus's tokens
DEFAULT_SHARD_TOKENS = 100_000_000
AUTO_PARALLEL_BYTES = 64 << 20  # below this, process start-up costs more than it saves


def doc_hash(text: str) -> int:
    """64-bit hash that decides a document's split (stable across runs, machines and Python versions)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def encode_chunk(tok: Tokenizer, dtype: np.dtype, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens of all documents concatenated, each with <|bos|> first; per-document lengths; hashes)."""
    encoded = tok.encode_batch(texts)
    lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
    bos = (tok.bos_id,)
    tokens = np.fromiter(itertools.chain.from_iterable(itertools.chain(bos, ids) for ids in encoded),
                         dtype=dtype, count=int(lengths.sum()))
    hashes = np.fromiter((doc_hash(t) for t in texts), dtype=np.uint64, count=len(texts))
    return tokens, lengths, hashes


# Worker processes each hold one tokenizer, built once by the pool initializer: a per-process cache, the
# standard pattern for ProcessPoolExecutor (sending the tokenizer with every chunk would double the IPC).
_worker_state: dict = {}


def _init_worker(tok_json: str, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already; no nested thread pools
    _worker_state["tok"] = Tokenizer.from_json(tok_json)
    _worker_state["dtype"] = np.dtype(dtype)


def _encode_in_worker(texts: list[str]):
    return encode_chunk(_worker_state["tok"], _worker_state["dtype"], texts)


def _chunks(corpus: Corpus, chunk_chars: int):
    """Group documents into chunks of about `chunk_chars` characters; yields (texts, bytes read so far)."""
    texts, size = [], 0
    for doc in corpus.documents():
        texts.append(doc)
        size += len(doc)
        if size >= chunk_chars:
            yield texts, corpus.bytes_done
            texts, size = [], 0
    if texts:
        yield texts, corpus.bytes_done


class _Splitter:
    """Routes documents to the train and val writers (see the module docstring for the rule).

    Documents bound for train wait in a reserve (sorted by hash) while they might still be needed to fill the
    validation split up to min_docs documents and min_tokens tokens: the reserve is the shortest run of
    smallest hashes seen so far that would reach both, and whatever leaves it goes to train at once.
    """

    def __init__(self, train: ShardWriter, val: ShardWriter, fraction: float, min_docs: int, min_tokens: int = 0,
                 max_share: float = MAX_VAL_SHARE):
        self.train, self.val = train, val
        self.threshold = np.uint64(min(int(fraction * HASH_SPACE), HASH_SPACE - 1))
        self.min_docs, self.min_tokens, self.max_share = min_docs, min_tokens, max_share
        self.reserve: list[tuple[int, int, np.ndarray]] = []  # sorted (hash, seq, tokens): val candidates
        self.reserve_tokens = 0
        self.seq = 0
        self.val_docs = self.val_tokens = self.total_tokens = 0

    def _enough(self, docs: int, tokens: int) -> bool:
        return docs >= self.min_docs and tokens >= self.min_tokens

    def add(self, tokens: np.ndarray, lengths: np.ndarray, hashes: np.ndarray) -> None:
        """Route a chunk of documents. The result depends only on the document sequence, not on chunking."""
        to_val = hashes < self.threshold if self.threshold else np.zeros(len(hashes), dtype=bool)
        self._write(self.val, tokens, lengths, to_val)
        self.val_docs += int(to_val.sum())
        self.val_tokens += int(lengths[to_val].sum())
        self.total_tokens += int(lengths.sum())
        to_train = ~to_val
        cand = np.zeros(len(hashes), dtype=bool)
        if self.min_docs or self.min_tokens:  # a superset of the documents that enter the reserve
            full = self._enough(len(self.reserve), self.reserve_tokens)
            cand = to_train & (hashes < np.uint64(self.reserve[-1][0])) if full else to_train
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        done = 0  # documents before this index are routed
        for i in np.flatnonzero(cand):
            self._write_range(tokens, lengths, offsets, to_train, done, i)
            doc = tokens[offsets[i]:offsets[i + 1]].copy()
            bisect.insort(self.reserve, (int(hashes[i]), self.seq, doc), key=lambda r: r[:2])
            self.reserve_tokens += len(doc)
            self.seq += 1
            # the largest hashes leave the reserve for train, now, while the rest still suffices
            while self._enough(len(self.reserve) - 1, self.reserve_tokens - len(self.reserve[-1][2])):
                out = self.reserve.pop()[2]
                self.reserve_tokens -= len(out)
                self.train.write(out, np.array([len(out)]))
            done = i + 1
        self._write_range(tokens, lengths, offsets, to_train, done, len(lengths))

    def _write_range(self, tokens, lengths, offsets, to_train, a: int, b: int) -> None:
        if b > a:
            self._write(self.train, tokens[offsets[a]:offsets[b]], lengths[a:b], to_train[a:b])

    def finish(self) -> int:
        """Move what the validation split still lacks from the reserve into it (smallest hashes first); returns
        the documents moved. Tokens are topped up only within max_share of the corpus."""
        need_docs = max(0, self.min_docs - self.val_docs)
        room = int(self.max_share * self.total_tokens)
        moved = 0
        for _, _, doc in self.reserve:
            take = moved < need_docs or (self.val_tokens < self.min_tokens and self.val_tokens + len(doc) <= room)
            (self.val if take else self.train).write(doc, np.array([len(doc)]))
            if take:
                moved += 1
                self.val_docs += 1
                self.val_tokens += len(doc)
        self.reserve, self.reserve_tokens = [], 0
        return moved

    @staticmethod
    def _write(w: ShardWriter, tokens, lengths, doc_mask) -> None:
        if doc_mask.all():
            w.write(tokens, lengths)
        elif doc_mask.any():
            w.write(tokens[np.repeat(doc_mask, lengths)], lengths[doc_mask])


def prepare(inputs, tokenizer, output, *, val_fraction: float | None = None, val_docs: int | None = None,
            workers: int = 1, read: ReadOptions | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            chunk_chars: int = 1 << 20, progress: bool = True) -> dict:
    """Tokenize `inputs` into a data directory at `output`; returns the manifest.

    tokenizer: a `Tokenizer` or a path to one. workers: processes for tokenization (0 = auto: one per core
    for inputs over 64 MiB, else 1; the tokenizer still uses threads inside a single process).
    val_fraction / val_docs: the validation split (module docstring); neither: the default rule.
    """
    default_val = val_fraction is None and val_docs is None
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_docs is not None and val_docs < 1:
        raise DataError(f"--val-docs must be >= 1, got {val_docs}")
    if workers < 0:
        raise DataError(f"--workers must be >= 0 (0 = auto), got {workers}")
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    out = Path(output)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise DataError(f"output {out} exists and is not a nanoseek data directory; choose a new --output "
                        "(an existing data directory is replaced)")
    read = read or ReadOptions()
    corpus = Corpus(inputs, read)
    if workers == 0:
        workers = min(os.cpu_count() or 1, 8) if corpus.total_bytes >= AUTO_PARALLEL_BYTES else 1
    dtype = token_dtype(tok.vocab_size)
    fraction, min_val = (0.0, val_docs) if val_docs is not None else (val_fraction, 1 if val_fraction > 0 else 0)
    min_tokens = DEFAULT_VAL_TOKENS if default_val else 0

    with atomic_dir(out) as tmp, contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:
            # fork where it is the platform default (Linux): no re-import of torch per worker and no
            # `if __name__ == "__main__"` requirement on API users; the workers touch neither torch nor
            # threads inherited from the parent. Elsewhere spawn (fork is unsafe on macOS).
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            pool = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker,
                initargs=(tok.to_json(), dtype.str)))
            pool.submit(int).result()  # start the workers now, before the progress bar starts its thread
        train = ShardWriter(tmp, "train", dtype, shard_tokens)
        val = ShardWriter(tmp, "val", dtype, shard_tokens)
        splitter = _Splitter(train, val, fraction, min_val, min_tokens)
        bar = stack.enter_context(tqdm(total=corpus.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                                       desc="tokenizing", disable=not progress, file=sys.stderr))
        docs = toks = 0

        def consume(result, pos):
            nonlocal docs, toks
            tokens, lengths, hashes = result
            splitter.add(tokens, lengths, hashes)
            docs, toks = docs + len(lengths), toks + len(tokens)
            bar.update(pos - bar.n)
            bar.set_postfix(docs=f"{docs:,}", tokens=f"{toks:,}", refresh=False)

        if pool is None:
            for texts, pos in _chunks(corpus, chunk_chars):
                consume(encode_chunk(tok, dtype, texts), pos)
        else:
            pending: deque = deque()  # bounded, in order: memory stays flat, output is deterministic
            for texts, pos in _chunks(corpus, chunk_chars):
                pending.append((pool.submit(_encode_in_worker, texts), pos))
                if len(pending) >= 2 * workers:
                    fut, p = pending.popleft()
                    consume(fut.result(), p)
            while pending:
                fut, p = pending.popleft()
                consume(fut.result(), p)
        by_hash = splitter.val_docs
        topped_up = splitter.finish()
        by_hash = by_hash + min(topped_up, max(0, min_val - by_hash))  # the at-least-N-documents rule
        bar.close()
        splits = {"train": train.close(), "val": val.close()}
        n_docs = docs
        if splits["train"]["tokens"] == 0:
            raise DataError(f"the corpus has only {n_docs} document(s), too few to hold out a validation split; "
                            "add data, split text files with --text-unit paragraph|line, or lower "
                            "--val-docs/--val-fraction (0 disables the split)")
        manifest = {
            "format": FORMAT, "version": VERSION,
            "tokenizer_fingerprint": tok.fingerprint(), "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
            "dtype": dtype.name,
            "splits": splits,
            "total_tokens": sum(s["tokens"] for s in splits.values()),
            "total_documents": sum(s["documents"] for s in splits.values()),
            "val_selection": {"rule": "blake2b-64 hash of the document's UTF-8 text",
                              **({"docs": val_docs} if val_docs is not None
                                 else {"fraction": val_fraction, "min_docs": min_val})},
            "inputs": [str(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)],
            "read": {"field": read.field, "column": read.column, "text_unit": read.text_unit,
                     "max_docs": read.max_docs, "on_bad_file": read.on_bad_file},
            "skipped_files": len(corpus.skipped),  # binary files in input folders
            "bad_utf8_files": len(corpus.bad_files),  # text not UTF-8, handled by read.on_bad_file
        }
        if min_tokens:
            manifest["val_selection"].update(min_tokens=min_tokens, max_share=MAX_VAL_SHARE)
        manifest["val_selection"]["note"] = _val_note(val_docs, val_fraction, min_tokens, splits["val"],
                                                      splitter.total_tokens, by_hash)
        assert set(splits) == set(SPLITS)
        write_manifest(tmp, manifest)
        tok.save(tmp / "tokenizer")
    return manifest


def _val_note(val_docs, fraction, min_tokens, val: dict, total_tokens: int, by_rule: int) -> str:
    """One line saying how the validation split was chosen (printed by `data prepare`, kept in the manifest)."""
    if val_docs is not None:
        return f"--val-docs {val_docs}: the {val_docs} documents with the smallest text hashes"
    share = val["tokens"] / max(total_tokens, 1)
    what = f"{fraction * 100:g}% of the documents by text hash" if fraction else "no validation split"
    if not min_tokens:
        return what + (" (at least one document)" if fraction else "")
    raised = f"gave {by_rule} document(s), raised to {val['documents']} (the next smallest hashes)"
    if val["tokens"] >= min_tokens:
        if val["documents"] == by_rule:
            return f"{what} ({val['tokens']:,} tokens: at least one default evaluation, {min_tokens:,})"
        return f"{what} {raised} to hold one default evaluation of `nanoseek pretrain` ({min_tokens:,} tokens)"
    return (f"{what} {raised if val['documents'] > by_rule else f'gave {by_rule} document(s)'}: "
            f"{val['tokens']:,} tokens, {share:.0%} of the corpus (at most {MAX_VAL_SHARE:.0%} is held out, less "
            f"than one default evaluation of {min_tokens:,}); `nanoseek pretrain` evaluates on what there is")
