"""The latent KV cache: per token and layer only [c^KV (kv_lora_rank) | k^R (qk_rope_head_dim)] (docs/architecture.md §3.3).

One tensor [layers, rows, max_len, kv_lora_rank + qk_rope_head_dim], preallocated for a batch of requests up
to the longest request's limit (prompt + max new tokens), so decoding never allocates or copies the cache.
Row b holds request b's tokens at their positions; the model writes new entries in place
(nanoseek.model.inference). When a request finishes, the last active row moves into its place, so the
remaining rows stay a prefix [0, n_active) that every step can view without gathering.
"""

from __future__ import annotations

import torch

from nanoseek.config import ModelConfig
from nanoseek.errors import ContextLengthError


class LatentCache:
    def __init__(self, config: ModelConfig, rows: int, max_len: int, *, layers: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if max_len > config.max_position_embeddings:
            raise ContextLengthError(f"a cache of {max_len} positions exceeds the model's context length "
                                     f"(max_position_embeddings = {config.max_position_embeddings})")
        self.width = config.kv_lora_rank + config.qk_rope_head_dim
        self.n_layers = config.num_hidden_layers if layers is None else layers
        self.max_len = max_len
        # zeros, not empty: rows shorter than the batch's longest are masked in attention, and masked
        # garbage could still be NaN (NaN * 0 is NaN in some kernels)
        self.data = torch.zeros(self.n_layers, rows, max_len, self.width, dtype=dtype, device=device)

    @property
    def rows(self) -> int:
        return self.data.shape[1]

    def views(self, n_rows: int | None = None, start: int = 0) -> list[torch.Tensor]:
        """Per layer [n_rows, max_len, width] views of rows start..start+n_rows (no copy)."""
        stop = self.rows if n_rows is None else start + n_rows
        return list(self.data[:, start:stop].unbind(0))

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of row src into row dst (compacting after a request leaves)."""
        if src != dst and length > 0:
            self.data[:, dst, :length] = self.data[:, src, :length]

    def values_per_token(self) -> int:
        return self.n_layers * self.width

    def bytes_per_token(self) -> int:
        return self.values_per_token() * self.data.element_size()

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()
