"""Pretraining: packed token windows from `nanoseek data prepare`, next-token + MTP + balance loss, and
validation loss / bits per byte: the `Task` the training loop runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.train.config import TrainConfig
from nanoseek.train.loop import Task


class PretrainTask(Task):
    """Batches from a PackedLoader over DATA/train (sharded by rank); evaluation over DATA/val."""

    def __init__(self, data_dir: str | Path, cfg: TrainConfig, *, device: torch.device, rank: int = 0,
                 world_size: int = 1, tokenizer=None):
        from nanoseek.data.loader import PackedLoader
        from nanoseek.tokenizer import Tokenizer

        data_dir = Path(data_dir)
        tokenizer = tokenizer or Tokenizer.load(data_dir / "tokenizer")
        kw = dict(rank=rank, world_size=world_size, seed=cfg.seed, tokenizer=tokenizer)
        self.loader = PackedLoader(data_dir, "train", cfg.seq_len, cfg.batch_size, **kw)
        self.val = PackedLoader(data_dir, "val", cfg.seq_len, cfg.batch_size, **kw)
        self.device = device
        self.tokens_per_batch = self.loader.tokens_per_batch
        self.token_bytes = torch.from_numpy(tokenizer.token_bytes()).to(device, torch.int64)

    def next_batch(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.loader.next_batch()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def loss(self, model: nn.Module, batch, cfg: TrainConfig):
        x, y = batch
        return model(x, targets=y, mtp_weight=cfg.mtp_weight, aux_loss_alpha=cfg.aux_loss_alpha)

    def evaluate(self, model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
        from nanoseek.train.distributed import all_reduce_sum

        batches = ((x.to(self.device), y.to(self.device)) for x, y in self.val.iter_eval(cfg.eval_batches))
        return metrics_from_sums(all_reduce_sum(eval_sums(model, batches, self.token_bytes)))

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


def eval_sums(model: nn.Module, batches, token_bytes: torch.Tensor) -> torch.Tensor:
    """[nats over all targets, targets, nats over targets that are text, UTF-8 bytes of those targets] (fp64).

    Bits per byte = nats / (ln 2 x bytes): the loss per byte of text, comparable across tokenizers. Special
    tokens (0 bytes, e.g. <|bos|>) are left out of both sums, as nanochat does: they are not text.
    """
    out = torch.zeros(4, dtype=torch.float64, device=token_bytes.device)
    for x, y in batches:
        logits = model(x)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none", ignore_index=-100)
        valid = y.flatten() >= 0
        nb = token_bytes[y.flatten().clamp_min(0)] * valid
        out += torch.stack([nll.sum(), valid.sum(), (nll * (nb > 0)).sum(), nb.sum()]).double()
    return out


def metrics_from_sums(s: torch.Tensor) -> dict[str, float]:
    nats, n, text_nats, nbytes = s.tolist()
    return {"val_loss": nats / max(n, 1), "val_bpb": text_nats / (math.log(2) * nbytes) if nbytes else float("nan")}


def write_tokenizer_files(tok, directory: Path) -> None:
    """Every checkpoint carries its tokenizer, and a generation_config.json that stops at the chat template's
    end of turn as well as at end of text (HF generate, vLLM and SGLang read it)."""
    from nanoseek.hf import write_generation_config

    tok.save(directory)
    write_generation_config(directory, bos_token_id=tok.bos_id, eos_token_ids=tok.stop_ids, pad_token_id=tok.pad_id)
