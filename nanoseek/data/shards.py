"""The token-shard format: flat memmap files of token ids plus manifest.json.

A prepared data directory:
    manifest.json          format name + version, tokenizer fingerprint, dtype, per split its shard files with
                           token and document counts, totals
    train/000000.bin ...   raw little-endian uint16 (uint32 when the vocabulary needs it) token ids; every
    val/000000.bin ...     document is <|bos|> + its tokens; shards are cut at document boundaries
    tokenizer/             the tokenizer that produced the ids (a run folder is self-contained)

Nothing else is in a shard (no header), so `numpy.memmap` reads it directly and any tool can too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoseek.errors import DataError
from nanoseek.io import atomic_write_text

FORMAT = "nanoseek-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (ids < 65536), else uint32."""
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise DataError(f"vocabulary of {vocab_size} tokens does not fit in uint32 token shards")


class ShardWriter:
    """Appends documents to numbered shard files of one split, cutting at document boundaries."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        (root / split).mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self._fh = None

    def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as their concatenated tokens and per-document lengths."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        start, ends = 0, np.cumsum(lengths)
        i, n = 0, len(lengths)
        while i < n:
            if self._fh is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._roll()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            j = int(np.searchsorted(ends, start + room, side="right"))  # whole documents that fit
            if j == i:
                if self.shards[-1]["tokens"]:
                    self._roll()
                    continue
                j = i + 1  # a document longer than a shard gets a shard of its own
            end = int(ends[j - 1])
            self._fh.write(tokens[start:end].tobytes())
            self.shards[-1]["tokens"] += end - start
            self.shards[-1]["documents"] += j - i
            start, i = end, j

    def _roll(self) -> None:
        if self._fh is not None:
            self._fh.close()
        name = f"{self.split}/{len(self.shards):06d}.bin"
        self._fh = open(self.root / name, "wb")
        self.shards.append({"file": name, "tokens": 0, "documents": 0})

    def close(self) -> dict:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        return {"shards": self.shards, "tokens": sum(s["tokens"] for s in self.shards),
                "documents": sum(s["documents"] for s in self.shards)}


def write_manifest(root: Path, manifest: dict) -> None:
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """Load and check manifest.json of a prepared data directory."""
    root = Path(data_dir)
    path = root / MANIFEST
    if not path.is_file():
        what = "does not exist" if not root.exists() else "has no manifest.json"
        raise DataError(f"data directory {root} {what}: prepare one with `nanoseek data prepare`")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}); re-run `nanoseek data prepare`") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{path} is not a nanoseek token-shard manifest; re-run `nanoseek data prepare`")
    if m.get("version") != VERSION:
        raise DataError(f"{path} has format version {m.get('version')}, this nanoseek reads version {VERSION}; "
                        "re-run `nanoseek data prepare`")
    return m


def check_tokenizer(manifest: dict, tokenizer, where) -> None:
    """The ids in the shards mean something only under the tokenizer that wrote them."""
    want, got = manifest.get("tokenizer_fingerprint"), tokenizer.fingerprint()
    if want != got:
        raise DataError(f"tokenizer mismatch: the shards in {where} were made by tokenizer {want}, the tokenizer "
                        f"given is {got}; use the data directory's own tokenizer ({where}/tokenizer) or re-run "
                        "`nanoseek data prepare` with this one")


@dataclass
class SplitData:
    """One split opened read-only: its shards as memmaps, checked against the manifest."""

    arrays: list[np.memmap]
    tokens: int
    documents: int


def open_split(data_dir: str | os.PathLike, split: str, manifest: dict | None = None) -> SplitData:
    root = Path(data_dir)
    m = manifest if manifest is not None else read_manifest(root)
    if split not in m.get("splits", {}):
        raise DataError(f"{root} has no split {split!r} (splits: {', '.join(m.get('splits', {}))})")
    dtype = np.dtype(m["dtype"])
    info = m["splits"][split]
    arrays = []
    for s in info["shards"]:
        path = root / s["file"]
        if not path.is_file():
            raise DataError(f"shard {path} is missing; re-run `nanoseek data prepare`")
        size, want = path.stat().st_size, s["tokens"] * dtype.itemsize
        if size != want:
            raise DataError(f"shard {path} is truncated or corrupt: {size} bytes, the manifest says {s['tokens']} "
                            f"{dtype.name} tokens ({want} bytes); re-run `nanoseek data prepare`")
        if s["tokens"]:
            arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return SplitData(arrays, int(info["tokens"]), int(info["documents"]))
