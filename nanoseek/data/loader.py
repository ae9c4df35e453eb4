"""PackedLoader: token shards -> fixed-length training batches, per data-parallel rank, resumable.

Packing. A split's shards are one token stream (documents already <|bos|>-separated). Window w is the
seq_len+1 tokens starting at w*seq_len: consecutive windows share one token, so every next-token pair in the
stream is a target exactly once per epoch (x = window[:-1], y = window[1:]). Windows may cross document and
shard boundaries: no cross-document attention mask, as DeepSeek pretrains.

Order and ranks. Each epoch visits the windows in a permutation drawn from (seed, epoch). Global batch k of
an epoch is the permutation's slice [k*G, (k+1)*G) with G = batch_size * world_size, and rank r takes the
contiguous part [r*batch_size, (r+1)*batch_size) of it. So ranks never overlap, together they cover the
global batch, and the global batch is the same for any split of G into ranks x batch_size: a 2-process run
sees exactly the data of a 1-process run with twice the batch. The windows left over after the last whole
global batch wait for the next epoch's shuffle. Iteration is infinite.

Position. The state is (epoch, windows consumed in the epoch): restoring it continues with exactly the next
batch, even under a different world size (the next global batch starts where the last one ended).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from nanoseek.errors import DataError
from nanoseek.data.shards import check_ids, check_tokenizer, open_split, read_manifest

STATE_VERSION = 1


class PackedLoader:
    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, tokenizer=None):
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        if seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.data_dir, self.split = Path(data_dir), split
        self.seq_len, self.batch_size, self.rank, self.world_size, self.seed = seq_len, batch_size, rank, world_size, seed
        self.manifest = read_manifest(self.data_dir)
        if tokenizer is not None:
            check_tokenizer(self.manifest, tokenizer, self.data_dir)
        data = open_split(self.data_dir, split, self.manifest)
        self._arrays = data.arrays  # read-only memmaps: batches read only the windows they need
        self._data = data  # shard paths; a split too big to scan at open is checked as windows are read
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])  # token offset of each shard
        self.n_tokens, self.n_documents = data.tokens, data.documents
        self.n_windows = max(self.n_tokens - 1, 0) // seq_len
        if self.n_windows < self.global_batch:
            raise DataError(
                f"the {split} split of {self.data_dir} has {self.n_tokens:,} tokens, {self.n_windows} window(s) of "
                f"seq_len+1={seq_len + 1}, fewer than one global batch of {self.global_batch} "
                f"(batch_size {batch_size} x {world_size} rank(s)); lower the batch size or sequence length, "
                "or prepare more data")
        self.epoch = 0
        self._pos = 0  # windows of this epoch's order already consumed (all ranks together)
        self._order_cache: tuple[int, np.ndarray] | None = None

    # ---- sizes ----------------------------------------------------------------------------------------
    @property
    def tokens_per_batch(self) -> int:
        """Tokens in one batch of this rank (x's size)."""
        return self.batch_size * self.seq_len

    @property
    def global_batch(self) -> int:
        """Sequences per step over all ranks."""
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.n_windows // self.global_batch

    @property
    def tokenizer_dir(self) -> Path:
        """The tokenizer that made the shards (copied there by `nanoseek data prepare`)."""
        return self.data_dir / "tokenizer"

    # ---- training iteration ---------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y int64 [batch_size, seq_len]; y is x shifted left by one token."""
        g = self.global_batch
        if self._pos + g > self.n_windows:
            self.epoch, self._pos = self.epoch + 1, 0
        start = self._pos + self.rank * self.batch_size
        windows = self._order(self.epoch)[start:start + self.batch_size]
        self._pos += g
        return self._batch(windows)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "split": self.split, "seed": self.seed, "seq_len": self.seq_len,
                "n_windows": self.n_windows, "epoch": self.epoch, "position": self._pos,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        for key in ("seed", "seq_len", "n_windows"):
            if state.get(key) != getattr(self, key):
                raise DataError(f"loader state was saved with {key}={state.get(key)}, this loader has "
                                f"{key}={getattr(self, key)}: resuming would not continue the same data order "
                                "(same data directory, --seq-len and --seed are needed)")
        self.epoch, self._pos = int(state["epoch"]), int(state["position"])

    # ---- evaluation -----------------------------------------------------------------------------------
    def iter_eval(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split's windows in stored order from the start: the same batches every call, ranks disjoint.

        Every rank yields the same number of batches (whole global batches only), so per-rank sums can be
        all-reduced. Does not touch the training position.
        """
        g = self.global_batch
        n = self.batches_per_epoch if max_batches is None else min(max_batches, self.batches_per_epoch)
        for k in range(n):
            start = k * g + self.rank * self.batch_size
            yield self._batch(np.arange(start, start + self.batch_size))

    # ---- internals ------------------------------------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order_cache = (epoch, rng.permutation(self.n_windows))
        return self._order_cache[1]

    def _batch(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.seq_len
        buf = np.empty((len(windows), t + 1), dtype=np.int64)
        for row, w in enumerate(windows):
            self._read(int(w) * t, buf[row])
        return torch.from_numpy(buf[:, :-1].copy()), torch.from_numpy(buf[:, 1:].copy())

    def _read(self, start: int, out: np.ndarray) -> None:
        """Copy tokens [start, start+len(out)) of the split's stream into out (crossing shards if needed)."""
        done = 0
        s = int(np.searchsorted(self._starts, start, side="right")) - 1
        while done < len(out):
            a = self._arrays[s]
            off = start + done - int(self._starts[s])
            n = min(len(out) - done, len(a) - off)
            if not self._data.scanned:
                check_ids(a[off:off + n], self._data.vocab_size, self._data.paths[s], off)
            out[done:done + n] = a[off:off + n]
            done += n
            s += 1
