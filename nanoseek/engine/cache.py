"""The persistent latent KV cache: one pool of rows for all requests, and the prefix index that reuses them.

Per token and layer MLA needs only [c^KV (kv_lora_rank) | k^R (qk_rope_head_dim)] (docs/architecture.md
§3.3), so a row of `max_len` positions is small (cpu-small in bf16: 640 bytes a token, 1.3 MB a 2,048-token
row). The pool is allocated once, at start, from a memory budget: [layers, rows, max_len + 1, width]. The
extra last position of every row is scratch: padding rows of a compiled batch write there, and nothing
ever attends to it.

Rows are handed out as `Slot`s. The rows of requests that are decoding are kept first, [0, n_decoding), so
a decode step reads the cache as a plain view, without gathering: a request that starts decoding swaps its
row into that region, one that leaves swaps its row out (one copy of the two rows' used positions).

Prefix reuse (as vLLM's automatic prefix caching and SGLang's radix cache do it): a slot's tokens are
indexed by the hash of every BLOCK-token prefix they hold. A new request looks up its prompt's prefix
hashes, takes the slot holding the longest match (or copies that prefix into a free row when the holder is
busy) and prefills only the rest. Finished requests leave their rows cached; when rows run out, the least
recently used cached row is evicted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from nanoseek.config import ModelConfig
from nanoseek.errors import ContextLengthError

BLOCK = 16  # prefix-hash granularity in tokens


class LatentPool:
    """[layers, rows, max_len + 1, width] latent cache; position max_len of every row is scratch."""

    def __init__(self, config: ModelConfig, rows: int, max_len: int, *, layers: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if max_len > config.max_position_embeddings:
            raise ContextLengthError(f"a cache of {max_len} positions exceeds the model's context length "
                                     f"(max_position_embeddings = {config.max_position_embeddings})")
        self.width = config.kv_lora_rank + config.qk_rope_head_dim
        self.n_layers = config.num_hidden_layers if layers is None else layers
        self.max_len = max_len
        # zeros, not empty: positions beyond a row's length are masked in attention, and masked garbage could
        # still be NaN (NaN * 0 is NaN in some kernels); later they only ever hold finite stale values
        self.data = torch.zeros(self.n_layers, rows, max_len + 1, self.width, dtype=dtype, device=device)
        self.layers = list(self.data.unbind(0))  # per layer [rows, max_len + 1, width] views

    @property
    def rows(self) -> int:
        return self.data.shape[1]

    @staticmethod
    def row_bytes(config: ModelConfig, max_len: int, dtype: torch.dtype, layers: int | None = None) -> int:
        n_layers = config.num_hidden_layers if layers is None else layers
        width = config.kv_lora_rank + config.qk_rope_head_dim
        return n_layers * (max_len + 1) * width * torch.finfo(dtype).bits // 8

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange the first `length` positions of rows a and b."""
        if a != b and length > 0:
            self.data[:, [a, b], :length] = self.data[:, [b, a], :length]

    def copy(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of row src into row dst."""
        if src != dst and length > 0:
            self.data[:, dst, :length] = self.data[:, src, :length]

    def bytes_per_token(self) -> int:
        return self.n_layers * self.width * self.data.element_size()

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def block_hashes(tokens: list[int], n_blocks: int | None = None) -> list[int]:
    """Chained hash of every full BLOCK-token prefix: h_i covers tokens[: (i + 1) * BLOCK]."""
    out, h = [], 0
    full = len(tokens) // BLOCK if n_blocks is None else min(n_blocks, len(tokens) // BLOCK)
    for i in range(full):
        h = hash((h, tuple(tokens[i * BLOCK:(i + 1) * BLOCK])))
        out.append(h)
    return out


_clock = itertools.count()


@dataclass(eq=False)
class Slot:
    """One row of the pool and what it holds: `tokens[:length]` are in the main cache, the first `mtp_len`
    positions in the draft cache (speculative decoding)."""

    row: int
    state: str = "free"  # free | cached (a finished request's tokens, reusable) | prefill | decode
    tokens: list[int] = field(default_factory=list)
    length: int = 0
    mtp_len: int = 0
    hashes: list[int] = field(default_factory=list)  # prefix hashes registered in the index
    last_used: int = 0
    owner: object = None  # the request using the row (prefill, decode)


class SlotPool:
    """The pool's rows as Slots: who holds which row, the decoding region, prefix lookup and LRU eviction."""

    def __init__(self, pools: list[LatentPool], prefix_caching: bool = True):
        self.pools = pools  # the main cache and, for speculative decoding, the draft cache (same rows)
        n = pools[0].rows
        self.slots = [Slot(row=i) for i in range(n)]
        self.by_row = list(self.slots)
        self.n_decoding = 0
        self.prefix_caching = prefix_caching
        self.index: dict[int, Slot] = {}
        self.reused_tokens = 0  # prompt tokens taken from the cache instead of computed, since start

    # ---- regions --------------------------------------------------------------------------------------
    def _swap(self, a: Slot, b: Slot) -> None:
        if a is b:
            return
        n = max(a.length, b.length)
        for pool in self.pools:
            pool.swap(a.row, b.row, n)
        a.row, b.row = b.row, a.row
        self.by_row[a.row], self.by_row[b.row] = a, b

    def start_decoding(self, slot: Slot) -> None:
        """Move slot's row into the decoding region [0, n_decoding)."""
        self._swap(slot, self.by_row[self.n_decoding])
        self.n_decoding += 1
        slot.state = "decode"

    def release(self, slot: Slot, keep: bool = True) -> None:
        """A request is done with slot: its row leaves the decoding region (if there) and is kept as a cached
        prefix (keep, with prefix caching on) or freed."""
        if slot.state == "decode":
            self.n_decoding -= 1
            self._swap(slot, self.by_row[self.n_decoding])
        self._unindex(slot)
        if keep and self.prefix_caching and slot.length > 0:
            slot.state = "cached"
            slot.last_used = next(_clock)
            self._index(slot)
        else:
            slot.state, slot.tokens, slot.length, slot.mtp_len = "free", [], 0, 0
        slot.owner = None

    def drop_cached(self) -> None:
        """Forget every cached prefix (the weights changed: their latents are stale). Rows in use keep theirs."""
        for s in self.slots:
            if s.state == "cached":
                self._unindex(s)
                s.state, s.tokens, s.length, s.mtp_len = "free", [], 0, 0
        for s in self.slots:  # a running request's prompt was computed by the old weights too
            self._unindex(s)

    def decoding(self) -> list[Slot]:
        return self.by_row[: self.n_decoding]

    def available(self) -> int:
        return sum(s.state in ("free", "cached") for s in self.slots)

    # ---- acquiring a row for a new request ---------------------------------------------------------------
    def acquire(self, prompt: list[int], reuse: bool = True, need_mtp: bool = False,
                mtp_optional: bool = False) -> Slot | None:
        """A row for a request with this prompt, holding as long a prefix of it as the cache has (at most
        len(prompt) - 1 tokens: the last prompt token is always computed, its logits start the answer).
        With need_mtp the reused prefix is also in the draft cache; with mtp_optional as well the longest prefix
        is reused whatever the draft cache holds of it (slot.mtp_len says how much: when that is short of the
        prompt the request cannot speculate). None when every row is in use."""
        holder, n = self._match(prompt) if reuse and self.prefix_caching else (None, 0)
        m = 0  # of the reused prefix, positions in the draft cache too
        if need_mtp and holder is not None:
            # draft position t pairs the hidden of token t with token t + 1, which must match as well
            m = max(min(n - 1, holder.mtp_len), 0)
            if not mtp_optional or m == n - 1:  # (the prefix's last token is computed again, for its hidden)
                n = m
        if holder is not None and n > 0 and holder.state == "cached":
            slot = holder  # take the cached row over
        else:
            slot = self._free_slot(avoid=holder)
            if slot is None:
                return None
            if holder is not None and n > 0:  # the prefix is in a busy row: copy it
                self.pools[0].copy(holder.row, slot.row, n)
                if need_mtp and m > 0:
                    self.pools[1].copy(holder.row, slot.row, m)
            else:
                n = m = 0
        self._unindex(slot)
        slot.state, slot.tokens, slot.length = "prefill", list(prompt[:n]), n
        slot.mtp_len = m if need_mtp else 0
        slot.last_used = next(_clock)
        self.reused_tokens += n
        return slot

    def _free_slot(self, avoid: Slot | None) -> Slot | None:
        free = [s for s in self.slots if s.state == "free"]
        if free:
            return free[0]
        cached = [s for s in self.slots if s.state == "cached" and s is not avoid]
        if not cached:
            return None
        victim = min(cached, key=lambda s: s.last_used)  # least recently used
        self._unindex(victim)
        victim.state, victim.tokens, victim.length, victim.mtp_len = "free", [], 0, 0
        return victim

    # ---- the prefix index ------------------------------------------------------------------------------
    def _match(self, prompt: list[int]) -> tuple[Slot | None, int]:
        best, n_blocks = None, 0
        for i, h in enumerate(block_hashes(prompt, (len(prompt) - 1) // BLOCK)):
            s = self.index.get(h)
            if s is None:
                break
            best, n_blocks = s, i + 1
        if best is None:
            return None, 0
        n = n_blocks * BLOCK
        if best.tokens[:n] != prompt[:n]:  # a hash collision: reuse nothing
            return None, 0
        limit = min(best.length, len(prompt) - 1)
        while n < limit and best.tokens[n] == prompt[n]:  # the matching tail beyond the last full block
            n += 1
        return best, n

    def index_prefix(self, slot: Slot) -> None:
        """Register slot's current tokens (e.g. a prompt just prefilled) so other requests can reuse them."""
        if self.prefix_caching:
            self._unindex(slot)
            self._index(slot)

    def _index(self, slot: Slot) -> None:
        slot.hashes = block_hashes(slot.tokens[: slot.length])
        for h in slot.hashes:
            self.index[h] = slot

    def _unindex(self, slot: Slot) -> None:
        for h in slot.hashes:
            if self.index.get(h) is slot:
                del self.index[h]
        slot.hashes = []
