"""Supervised fine-tuning: chat conversations, loss on the assistant's tokens only, through the one loop.

Data: OpenAI-style `messages` JSONL (nanoseek.data.chat reads, renders and packs it: several conversations
per row with a block-diagonal attention mask, so packing changes nothing a conversation computes).

Normalization. The loss is the mean over every assistant token of the optimizer step (all micro-batches, all
ranks), not a mean of per-micro-batch means: packed rows hold different numbers of assistant tokens, and a
per-micro-batch mean would weight a token in a sparse micro-batch more than one in a dense one (and make
--grad-accum change the result). The loop backpropagates loss / grad_accum per micro-batch and data
parallelism averages over ranks, so a micro-batch's loss is its summed token losses x grad_accum x
world_size / (the step's assistant tokens). The step's batches are fetched in `begin_step`, where the count is
known: every rank packs the same rows, so it counts all ranks' rows itself, with no communication. The MTP
losses are normalized the same way over their own targets; the balance loss stays a per-row mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.data.chat import IGNORE_INDEX, PackedChat, Row, file_digest, read_chat, split_validation
from nanoseek.errors import DataError, TokenizerError
from nanoseek.tokenizer import fingerprint_of
from nanoseek.train.config import TrainConfig, _f
from nanoseek.train.distributed import all_reduce_sum
from nanoseek.train.loop import Task

STATE_VERSION = 1


@dataclass
class SFTConfig(TrainConfig):
    """TrainConfig with fine-tuning defaults and the validation split."""

    steps: int = _f(500, "optimizer steps to train for (the schedule spans them)")
    seq_len: int = _f(512, "positions per packed row; conversations are packed several to a row, and a longer "
                           "one is cut to this length")
    lr: float = _f(1e-3, "peak learning rate")
    eval_every: int = _f(50, "evaluate (validation loss and token accuracy on held-out conversations) every N "
                             "steps and at the end (0: only at the end)")
    checkpoint_every: int = _f(100, "write a checkpoint every N steps and at the end (0: only at the end)")
    val_fraction: float = _f(0.05, "fraction of the conversations held out for validation, chosen by a hash of "
                                   "each conversation (ignored with --val-data; 0: no validation)")

    # what the saved data position depends on (the held-out set decides the training set)
    FIXED_ON_RESUME = ("optimizer", "seq_len", "seed", "val_fraction")

    def validate(self) -> "SFTConfig":
        super().validate()
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        return self


@dataclass
class SFTLoss:
    loss: torch.Tensor  # main + mtp_weight * mean over depths of MTP + balance, per token over the step
    main_loss: torch.Tensor
    mtp_losses: list[torch.Tensor] = field(default_factory=list)
    balance_loss: torch.Tensor | None = None
    expert_counts: torch.Tensor | None = None
    tokens: int = 0  # positions holding conversation tokens (tokens/s, MFU)


class SFTTask(Task):
    """Conversations from `data` (chat JSONL) packed into rows of cfg.seq_len; validation on held-out ones
    (`val_data`, else the cfg.val_fraction chosen by hash). mtp_depth: the model's MTP modules
    (num_nextn_predict_layers), which packing keeps from reading across conversations."""

    def __init__(self, data: str | Path, cfg: TrainConfig, *, tokenizer, device: torch.device | None = None,
                 rank: int = 0, world_size: int = 1, val_data: str | Path | None = None, mtp_depth: int = 0,
                 probe=None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.probe = probe  # an AccuracyProbe run at each evaluation (or None)
        self.device = device or torch.device("cpu")
        self.rank, self.world_size = rank, world_size
        self.data_path, self.val_path = Path(data), None if val_data is None else Path(val_data)
        chat = read_chat(self.data_path, tokenizer, cfg.seq_len)
        self.truncated, self.dropped = chat.truncated, list(chat.dropped)
        if self.val_path is not None:
            train, val = chat, read_chat(self.val_path, tokenizer, cfg.seq_len)
            self.truncated += val.truncated
            self.dropped += val.dropped
        else:
            tr, va = split_validation(chat.keys, getattr(cfg, "val_fraction", 0.0))
            train, val = chat.subset(tr), chat.subset(va) if va else None
        self.digest = file_digest(self.data_path, self.val_path)
        self.mtp_depth = mtp_depth
        self.train = PackedChat(train, cfg.seq_len, mtp_depth, tokenizer.pad_id)
        self.val = PackedChat(val, cfg.seq_len, mtp_depth, tokenizer.pad_id) if val is not None else None
        self.val_rows = self.val.rows(range(len(val))) if self.val is not None else []
        self.epoch, self.row = 0, 0
        self._epochs: dict[int, list[Row]] = {}
        rows = self._rows(0)
        self.fill = sum(self.train.counts(r)[2] for r in rows) / (len(rows) * cfg.seq_len)
        self.tokens_per_batch = max(1, round(cfg.batch_size * cfg.seq_len * self.fill))  # an estimate
        self._pending: list = []
        self._main_scale, self._mtp_scale = 0.0, [0.0] * mtp_depth

    # ---- the data stream --------------------------------------------------------------------------------
    def _rows(self, epoch: int) -> list[Row]:
        if epoch not in self._epochs:
            self._epochs = {e: r for e, r in self._epochs.items() if e >= epoch - 1}
            self._epochs[epoch] = self.train.epoch_rows(self.cfg.seed, epoch)
        return self._epochs[epoch]

    def _take(self, n: int) -> list[Row]:
        """The next n rows of the stream (all ranks'), crossing into the next epoch when this one runs out."""
        out: list[Row] = []
        while len(out) < n:
            rows = self._rows(self.epoch)
            k = min(n - len(out), len(rows) - self.row)
            out += rows[self.row:self.row + k]
            self.row += k
            if self.row == len(rows):
                self.epoch, self.row = self.epoch + 1, 0
        return out

    def begin_step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Fetch the step's micro-batches for this rank and count the step's assistant tokens over all ranks."""
        B, W, G = self.cfg.batch_size, self.world_size, self.cfg.grad_accum
        rows = self._take(G * B * W)  # micro-batch m, rank r: rows [(m W + r) B, (m W + r + 1) B)
        counts = [self.train.counts(r) for r in rows]
        main = sum(c[0] for c in counts)
        mtp = [sum(c[1][k] for c in counts) for k in range(self.mtp_depth)]
        self._main_scale = G * W / main if main else 0.0
        self._mtp_scale = [G * W / n if n else 0.0 for n in mtp]
        self._pending = [self.train.batch(rows[(m * W + self.rank) * B:(m * W + self.rank + 1) * B], self.device)
                         for m in range(G)]
        return {"target_tokens": float(main), "pack_fill": sum(c[2] for c in counts) / (len(rows) * self.cfg.seq_len),
                "epoch": self.epoch + self.row / len(self._rows(self.epoch))}

    def next_batch(self, model: nn.Module):
        if not self._pending:  # used outside the loop: one step's worth at a time
            self.begin_step(model, 0)
        return self._pending.pop(0)

    def loss(self, model: nn.Module, batch, cfg: TrainConfig) -> SFTLoss:
        if cfg.grad_accum != self.cfg.grad_accum:
            raise ValueError("SFTTask was built for another --grad-accum than the loop runs with")
        out = model(batch.x, targets=batch.y, attn_mask=batch.mask)
        # out.*_loss are means over this micro-batch's targets: back to sums, then over the step's count
        main = out.main_loss * (batch.targets * self._main_scale)
        mtp = [m * (n * s) for m, n, s in zip(out.mtp_losses, batch.mtp_targets, self._mtp_scale)]
        loss = main
        if mtp:
            loss = loss + cfg.mtp_weight / len(mtp) * torch.stack(mtp).sum()
        if out.balance_loss is not None:
            loss = loss + out.balance_loss
        return SFTLoss(loss, main, mtp, out.balance_loss, out.expert_counts, batch.tokens)

    # ---- evaluation -------------------------------------------------------------------------------------
    def describe(self) -> list[str]:
        """What the task reads, for the command to print at the start."""
        t, T = self.train.data, self.cfg.seq_len
        lines = [f"SFT data: {self.data_path}: {len(t):,} training conversations, {t.tokens:,} tokens of which "
                 f"{t.target_tokens:,} are the assistant's (the loss's); packed into {len(self._rows(0)):,} rows of "
                 f"{T} per epoch ({100 * self.fill:.0f}% filled)"]
        if self.val is None:
            lines.append("validation: none (--val-fraction 0 and no --val-data)")
        else:
            v = self.val.data
            src = str(self.val_path) if self.val_path else f"{100 * self.cfg.val_fraction:g}% of the file, chosen by hash"
            n = min(self.cfg.eval_batches, self._val_batches())
            lines.append(f"validation: {len(v):,} held-out conversations ({src}), {v.target_tokens:,} assistant "
                         f"tokens in {len(self.val_rows):,} rows; each evaluation reads {n} batch(es) of "
                         f"{self.cfg.batch_size} rows" + ("" if n == self._val_batches() else
                                                          " (raise --eval-batches to read them all)"))
        if self.truncated:
            lines.append(f"note: {self.truncated:,} conversation(s) were longer than --seq-len {T} and were cut to fit")
        if self.dropped:
            lines.append(f"note: {len(self.dropped):,} conversation(s) had no assistant token within the first {T} "
                         f"and were left out (first: {self.dropped[0]}); raise --seq-len to keep them")
        return lines

    def _val_batches(self) -> int:
        return math.ceil(len(self.val_rows) / (self.cfg.batch_size * self.world_size))

    def evaluate(self, model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
        """Validation loss (nats per assistant token) and token accuracy (the argmax is the assistant's token).
        Every rank runs the same number of forwards (rows past the end are padding), as FSDP needs."""
        probed = self.probe(model) if self.probe is not None else {}
        if self.val is None:
            return probed
        B, W = cfg.batch_size, self.world_size
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        V = model.config.vocab_size
        sub = max(1, min(B, (1 << 26) // (cfg.seq_len * V)))  # rows per forward: at most 64M logits at once
        for k in range(min(cfg.eval_batches, self._val_batches())):
            start = k * B * W + self.rank * B
            rows = [self.val_rows[i] if i < len(self.val_rows) else None for i in range(start, start + B)]
            for s in range(0, B, sub):
                batch = self.val.batch(rows[s:s + sub], self.device)
                logits = model(batch.x, attn_mask=batch.mask).float()
                y = batch.y.flatten()
                nll = F.cross_entropy(logits.flatten(0, 1), y, reduction="sum", ignore_index=IGNORE_INDEX)
                valid = y != IGNORE_INDEX
                hit = (logits.flatten(0, 1).argmax(-1) == y) & valid
                sums += torch.stack([nll.double(), valid.sum().double(), hit.sum().double()])
        nats, n, hits = all_reduce_sum(sums).tolist()
        return {"val_loss": nats / max(n, 1), "val_accuracy": hits / max(n, 1), **probed}

    # ---- checkpoints ------------------------------------------------------------------------------------
    def check_model(self, model_dir: str | Path) -> None:
        """The model must have learned the ids of the tokenizer the conversations are rendered with."""
        fp = fingerprint_of(model_dir)
        if fp != self.tokenizer.fingerprint():
            raise TokenizerError(f"{model_dir} carries tokenizer {fp or '(none: no tokenizer.json)'}, but the "
                                 f"conversations are rendered with tokenizer {self.tokenizer.fingerprint()}; "
                                 "fine-tune a checkpoint with its own tokenizer")

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "epoch": self.epoch, "row": self.row, "data": self.digest,
                "data_path": str(self.data_path), "val_path": None if self.val_path is None else str(self.val_path),
                "conversations": len(self.train.data), "seed": self.cfg.seed, "seq_len": self.cfg.seq_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(f"SFT data state version {state.get('version')} is not {STATE_VERSION}")
        if state.get("data") != self.digest:
            raise DataError(f"the run was trained on other data ({state.get('data_path')}"
                            + (f" with --val-data {state['val_path']}" if state.get("val_path") else "")
                            + f"; its files hash to {state.get('data')}, these to {self.digest}): resuming would not "
                            "continue the same data order; pass the same --data (and --val-data) or start a new --out")
        for key in ("conversations", "seed", "seq_len"):
            mine = len(self.train.data) if key == "conversations" else getattr(self.cfg, key)
            if state.get(key) != mine:
                raise DataError(f"SFT data state was saved with {key}={state.get(key)}, this run has {key}={mine}: "
                                "resuming would not continue the same data order")
        self.epoch, self.row = int(state["epoch"]), int(state["row"])
