"""The token-shard format: flat memmap files of token ids plus manifest.json.

A prepared data directory:
    manifest.json          format name + version, tokenizer fingerprint, dtype, per split its shard files with
                           token and document counts and a SHA-256 of the file's bytes, totals
    train/000000.bin ...   raw little-endian uint16 (uint32 when the vocabulary needs it) token ids; every
    val/000000.bin ...     document is <|bos|> + its tokens; shards are cut at document boundaries
    tokenizer/             the tokenizer that produced the ids (a run folder is self-contained)

Nothing else is in a shard (no header), so `numpy.memmap` reads it directly and any tool can too
(`sha256sum train/000000.bin` checks one against the manifest).

Checks. Every field of the manifest is checked against `nanoseek.schema.MANIFEST_FIELDS` on reading. Opening
a split checks each shard's size against the manifest and that its largest token id is below the vocabulary
(one max over the memmap: ~10 ms for a 100M-token uint16 shard in the page cache, else the time to read its
200 MB; splits past SCAN_BYTES are checked window by window as they are read instead), so a corrupt shard
fails with a message instead of an IndexError from the embedding.
`nanoseek data info` also verifies the SHA-256 of every shard (~0.2 s per 200 MB shard here).

Versions. 2 adds the per-shard `sha256`. Version 1 manifests (no checksums) are still read: their shards are
as valid as ever and re-preparing a large corpus costs hours, so they load with the size and id-range checks
and `data info` says that their bytes cannot be verified until they are prepared again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoseek import schema
from nanoseek.errors import DataError, TokenizerError
from nanoseek.io import atomic_write_text

FORMAT = "nanoseek-token-shards"
VERSION = 2  # what `data prepare` writes
READABLE_VERSIONS = (1, 2)
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
        self._hash = None

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
            chunk = tokens[start:end].tobytes()
            self._fh.write(chunk)
            self._hash.update(chunk)
            self.shards[-1]["tokens"] += end - start
            self.shards[-1]["documents"] += j - i
            start, i = end, j

    def _roll(self) -> None:
        self._close_shard()
        name = f"{self.split}/{len(self.shards):06d}.bin"
        self._fh = open(self.root / name, "wb")
        self._hash = hashlib.sha256()
        self.shards.append({"file": name, "tokens": 0, "documents": 0})

    def _close_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self.shards[-1]["sha256"] = self._hash.hexdigest()

    def close(self) -> dict:
        self._close_shard()
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
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}); re-run `nanoseek data prepare`") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{path} is not a nanoseek token-shard manifest; re-run `nanoseek data prepare`",
                        param="format")
    if m.get("version") not in READABLE_VERSIONS:
        raise DataError(f"{path} has format version {m.get('version')!r}, this nanoseek reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))}; re-run `nanoseek data prepare`", param="version")
    fix = "; re-run `nanoseek data prepare`"
    schema.check(m, schema.MANIFEST_FIELDS, DataError, str(path), hint=fix)

    def need(cond: bool, name: str, msg: str) -> None:
        if not cond:
            raise DataError(f"{path}: field '{name}' {msg}{fix}", param=name)

    need(m["vocab_size"] <= np.iinfo(m["dtype"]).max + 1, "dtype",
         f"({m['dtype']}) cannot hold the ids of a {m['vocab_size']:,}-token vocabulary")
    need(m["bos_id"] < m["vocab_size"], "bos_id", f"({m['bos_id']}) must be below vocab_size ({m['vocab_size']})")
    for name, split in m["splits"].items():
        for key in ("tokens", "documents"):
            total = sum(sh[key] for sh in split["shards"])
            need(split[key] == total, f"splits.{name}.{key}",
                 f"({split[key]}) is not the sum over its shards ({total})")
        for i, sh in enumerate(split["shards"]):
            need(m["version"] < 2 or "sha256" in sh, f"splits.{name}.shards[{i}].sha256", "is missing")
    for key in ("tokens", "documents"):
        total = sum(split[key] for split in m["splits"].values())
        need(m[f"total_{key}"] == total, f"total_{key}",
             f"({m[f'total_{key}']}) is not the sum over the splits ({total})")
    return m


def has_checksums(manifest: dict) -> bool:
    """Whether the manifest records a SHA-256 per shard (format version 2 on)."""
    return manifest["version"] >= 2


def verify_checksums(data_dir: str | os.PathLike, manifest: dict) -> int:
    """Hash every shard and compare with the manifest; returns the bytes hashed. Raises DataError naming the
    first shard whose bytes changed. (Open the splits first: that checks presence and sizes.)"""
    root = Path(data_dir)
    done = 0
    for split in manifest["splits"].values():
        for sh in split["shards"]:
            h = hashlib.sha256()
            with open(root / sh["file"], "rb") as f:
                while block := f.read(1 << 24):
                    h.update(block)
                    done += len(block)
            if h.hexdigest() != sh["sha256"]:
                raise DataError(f"shard {root / sh['file']} is corrupt: its SHA-256 is {h.hexdigest()[:16]}..., the "
                                f"manifest recorded {sh['sha256'][:16]}... (same size, different bytes); re-run "
                                "`nanoseek data prepare`")
    return done


def check_tokenizer(manifest: dict, tokenizer, where, source=None) -> None:
    """The ids in the shards mean something only under the tokenizer that wrote them.

    source: where `tokenizer` was loaded from, for the message (default: the path it was loaded from)."""
    want, got = manifest.get("tokenizer_fingerprint"), tokenizer.fingerprint()
    if want != got:
        source = source or getattr(tokenizer, "path", None) or "the tokenizer given"
        raise TokenizerError(
            f"tokenizer mismatch: the shards in {where} were made by tokenizer {want} (recorded in "
            f"{Path(where) / MANIFEST}), but {source} is tokenizer {got}; use the data directory's own tokenizer "
            f"({Path(where) / 'tokenizer'}) or re-run `nanoseek data prepare` with this one")


# Splits up to this size have every token id checked when opened (one max over the memmap: ~10 ms per 200 MB
# shard in the page cache, the disk's read time otherwise); bigger ones (where every rank re-reading them at start
# would take minutes) are checked window by window as batches read them (`check_ids`).
SCAN_BYTES = 4 << 30


@dataclass
class SplitData:
    """One split opened read-only: its shards as memmaps, checked against the manifest."""

    arrays: list[np.memmap]
    tokens: int
    documents: int
    paths: list[Path]
    vocab_size: int
    scanned: bool  # every token id was checked at open; else callers check what they read (check_ids)


def check_ids(ids: np.ndarray, vocab_size: int, path: Path, offset: int = 0) -> None:
    """Raise DataError naming the shard and position when an id in `ids` (read at `offset` of the shard at
    `path`) is not below the vocabulary: a corrupt shard, caught before the embedding's IndexError."""
    if len(ids) and int(ids.max()) >= vocab_size:
        at = int(np.argmax(ids >= vocab_size))
        raise DataError(f"shard {path} is corrupt: token {offset + at:,} has id {int(ids[at])}, the vocabulary has "
                        f"{vocab_size:,} ids; run `nanoseek data info {path.parent.parent}` to verify the checksums, "
                        "and re-run `nanoseek data prepare`")


def open_split(data_dir: str | os.PathLike, split: str, manifest: dict | None = None,
               scan: bool | None = None) -> SplitData:
    """Memmap a split's shards, checking each one's size and (scan; default: splits up to SCAN_BYTES) that every
    token id is below the vocabulary."""
    root = Path(data_dir)
    m = manifest if manifest is not None else read_manifest(root)
    if split not in m["splits"]:
        raise DataError(f"{root} has no split {split!r} (splits: {', '.join(m['splits'])})")
    dtype = np.dtype(m["dtype"]).newbyteorder("<")
    info = m["splits"][split]
    if scan is None:
        scan = info["tokens"] * dtype.itemsize <= SCAN_BYTES
    arrays, paths = [], []
    for s in info["shards"]:
        path = root / s["file"]
        if not path.is_file():
            raise DataError(f"shard {path} is missing; re-run `nanoseek data prepare`")
        size, want = path.stat().st_size, s["tokens"] * dtype.itemsize
        if size != want:
            raise DataError(f"shard {path} is truncated or corrupt: {size} bytes, the manifest says {s['tokens']} "
                            f"{dtype.name} tokens ({want} bytes); re-run `nanoseek data prepare`")
        if s["tokens"]:
            arr = np.memmap(path, dtype=dtype, mode="r")
            if scan:
                check_ids(arr, m["vocab_size"], path)
            arrays.append(arr)
            paths.append(path)
    return SplitData(arrays, int(info["tokens"]), int(info["documents"]), paths, m["vocab_size"], scan)
