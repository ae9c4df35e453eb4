"""Validation bits per byte of a model on the token shards of `nanoseek data prepare`: the same windows,
batches and sums as pretraining's evaluation (nanoseek.train.pretrain), so a checkpoint scores here what its
training log says, at the same dtype, --seq-len, --batch-size and --eval-batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanoseek.data.loader import PackedLoader
from nanoseek.data.shards import read_manifest
from nanoseek.errors import DataError
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.distributed import all_reduce_sum
from nanoseek.train.pretrain import eval_sums, metrics_from_sums


def validation_bpb(model: nn.Module, data_dir: str | Path, *, seq_len: int, batch_size: int = 8,
                   max_batches: int = 20, tokenizer=None, dtype: str | torch.dtype = "float32",
                   rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """{"val_bpb", "val_loss", "tokens", "batches"} of `model` on DATA/val.

    dtype: the matmul dtype under autocast (as training: fp32 weights with --dtype bfloat16 autocast); weights
    already in a lower precision are used as they are. tokenizer: the model's, checked against the shards'
    (TokenizerError when they differ). Raises DataError when the split has not one window of seq_len + 1.
    Under torchrun every rank calls it and gets the global figures.
    """
    data_dir = Path(data_dir)
    tokenizer = tokenizer or Tokenizer.load(data_dir / "tokenizer")
    amp = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    val_tokens = read_manifest(data_dir)["splits"]["val"]["tokens"]
    # pretraining's rule: a split smaller than one global batch is read in smaller batches
    per_rank = max(val_tokens - 1, 0) // seq_len // world_size
    batch = min(batch_size, per_rank)
    if batch < 1:
        raise DataError(f"the validation split of {data_dir} has {val_tokens:,} tokens: not one window of "
                        f"--seq-len+1 = {seq_len + 1} per process; lower --seq-len or prepare more validation data")
    loader = PackedLoader(data_dir, "val", seq_len, batch, rank=rank, world_size=world_size, tokenizer=tokenizer)
    device = next(model.parameters()).device
    token_bytes = torch.from_numpy(tokenizer.token_bytes()).to(device, torch.int64)
    n = min(max_batches, loader.batches_per_epoch)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            batches = ((x.to(device), y.to(device)) for x, y in loader.iter_eval(max_batches))
            sums = all_reduce_sum(eval_sums(model, batches, token_bytes))
    finally:
        model.train(was_training)
    return {**metrics_from_sums(sums), "tokens": int(sums[1].item()), "batches": n, "batch_size": batch,
            "seq_len": seq_len}
