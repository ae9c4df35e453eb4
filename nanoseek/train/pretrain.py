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

from nanoseek.data.loader import PackedLoader
from nanoseek.errors import TokenizerError
from nanoseek.hf import write_generation_config
from nanoseek.tokenizer import Tokenizer, fingerprint_of
from nanoseek.train.config import TrainConfig
from nanoseek.train.distributed import all_reduce_sum
from nanoseek.train.loop import Task


class PretrainTask(Task):
    """Batches from a PackedLoader over DATA/train (sharded by rank); evaluation over DATA/val."""

    def __init__(self, data_dir: str | Path, cfg: TrainConfig, *, device: torch.device, rank: int = 0,
                 world_size: int = 1, tokenizer=None, probe=None):
        data_dir = Path(data_dir)
        tokenizer = tokenizer or Tokenizer.load(data_dir / "tokenizer")
        self.data_dir, self.tokenizer = data_dir, tokenizer
        kw = dict(rank=rank, world_size=world_size, seed=cfg.seed, tokenizer=tokenizer)
        self.loader = PackedLoader(data_dir, "train", cfg.seq_len, cfg.batch_size, **kw)
        # Evaluate on what there is: a validation split smaller than one global batch is read in smaller
        # batches (the same windows on every call), and one without a single full window is not evaluated.
        val_tokens = self.loader.manifest["splits"]["val"]["tokens"]
        per_rank = max(val_tokens - 1, 0) // cfg.seq_len // world_size
        self.val_tokens, self.val_batch = val_tokens, min(cfg.batch_size, per_rank)
        self.val = PackedLoader(data_dir, "val", cfg.seq_len, self.val_batch, **kw) if self.val_batch else None
        self.device, self.probe = device, probe  # probe: an AccuracyProbe run at each evaluation (or None)
        self.tokens_per_batch = self.loader.tokens_per_batch
        self.token_bytes = torch.from_numpy(tokenizer.token_bytes()).to(device, torch.int64)

    def check_model(self, model_dir: str | Path) -> None:
        check_model_tokenizer(model_dir, self.tokenizer, self.data_dir)

    def next_batch(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.loader.next_batch()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def loss(self, model: nn.Module, batch, cfg: TrainConfig):
        x, y = batch
        return model(x, targets=y)

    def describe_eval(self, cfg: TrainConfig) -> str:
        """What an evaluation reads, in one line (the command prints it at the start)."""
        if self.val is None:
            return (f"validation split: {self.val_tokens:,} tokens, not one sequence of --seq-len+1 = "
                    f"{cfg.seq_len + 1} tokens per process: no evaluation (prepare more validation data with "
                    "--val-docs or --val-fraction, or lower --seq-len)")
        n = min(cfg.eval_batches, self.val.batches_per_epoch)
        ws = self.val.world_size
        note = "" if self.val_batch == cfg.batch_size and n == cfg.eval_batches else \
            f" (all the validation split holds; --eval-batches {cfg.eval_batches} x --batch-size {cfg.batch_size} " \
            "would need more)"
        return (f"validation split: {self.val_tokens:,} tokens; each evaluation reads {n} batch(es) of "
                f"{self.val_batch}{f' x {ws} processes' if ws > 1 else ''} x {cfg.seq_len} tokens{note}")

    def evaluate(self, model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
        out = {}
        if self.val is not None:
            batches = ((x.to(self.device), y.to(self.device)) for x, y in self.val.iter_eval(cfg.eval_batches))
            out = metrics_from_sums(all_reduce_sum(eval_sums(model, batches, self.token_bytes)))
        if self.probe is not None:
            out.update(self.probe(model))
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


def check_model_tokenizer(model_dir: str | Path, tokenizer, data_dir: str | Path) -> None:
    """A model trained on one tokenizer's ids must not continue on another's: compare the fingerprint of the
    tokenizer the model directory carries (every nanoseek checkpoint does) with the data's. Raises
    TokenizerError naming both fingerprints and where each came from."""
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    data_fp = tokenizer.fingerprint()
    data_src = getattr(tokenizer, "path", None) or data_dir / "tokenizer"
    model_fp = fingerprint_of(model_dir)
    if model_fp is None:
        raise TokenizerError(
            f"{model_dir} has no tokenizer.json, so nothing shows which tokenizer's ids its weights learned; the "
            f"data in {data_dir} is tokenizer {data_fp} ({data_src}). If the model was trained with that tokenizer, "
            f"copy {data_src}/tokenizer*.json into {model_dir}; otherwise prepare the data with the model's own "
            "tokenizer (`nanoseek data prepare --tokenizer ...`)")
    if model_fp != data_fp:
        raise TokenizerError(
            f"tokenizer mismatch: the model in {model_dir} was trained with tokenizer {model_fp} "
            f"({model_dir / 'tokenizer.json'}), the token shards in {data_dir} were made by tokenizer {data_fp} "
            f"({data_src}); the same ids would mean different text. Prepare the data with the model's tokenizer "
            f"(`nanoseek data prepare --tokenizer {model_dir} ...`) or train with data made by the same one")


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
    tok.save(directory)
    write_generation_config(directory, bos_token_id=tok.bos_id, eos_token_ids=tok.stop_ids, pad_token_id=tok.pad_id)
