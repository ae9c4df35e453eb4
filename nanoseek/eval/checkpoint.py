"""A checkpoint evaluated from its directory: what `nanoseek eval` and the speedrun's evaluation stages run.

    report = evaluate_checkpoint("run/sft", problems, style="chat", max_new_tokens=256)
    report["tasks"]["summary"]["accuracy"], report["tasks"]["summary"]["accuracy_se"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from nanoseek.data.tasks import Problem
from nanoseek.engine import Engine, load_tokenizer, resolve_checkpoint
from nanoseek.engine.loading import generation_eos_ids
from nanoseek.errors import CheckpointError
from nanoseek.eval.accuracy import evaluate_tasks
from nanoseek.eval.bpb import validation_bpb
from nanoseek.hf import load_model
from nanoseek.tokenizer import Tokenizer

FORMAT_VERSION = 1


def evaluate_checkpoint(checkpoint: str | Path, problems: Sequence[Problem] = (), *, data: str | Path | None = None,
                        seq_len: int | None = None, eval_batch_size: int = 8, eval_batches: int = 20,
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 32,
                        progress: Callable[[int, int], None] | None = None, **sampling: Any) -> dict[str, Any]:
    """{"format_version", "checkpoint", "bpb" (given data), "tasks" (given problems)} of a checkpoint directory
    (or a training run: its latest checkpoint).

    data: token shards (`nanoseek data prepare`): validation bits per byte as training computes them, fp32
    weights with matmuls under autocast at `dtype`, windows of seq_len (default: the context, at most 512).
    problems: task accuracy through the engine, `batch_size` requests at once; `sampling` and `progress` are
    `evaluate_tasks`' keywords. CheckpointError for a checkpoint without the tokenizer this needs."""
    ckpt = resolve_checkpoint(checkpoint)
    tok = load_tokenizer(ckpt)
    if tok is None:
        raise CheckpointError(f"{ckpt} has no tokenizer.json: evaluation encodes prompts and counts bytes with the "
                              "checkpoint's tokenizer; copy it there")
    model = load_model(ckpt, dtype=torch.float32 if data else dtype, device=device)
    report: dict[str, Any] = {"format_version": FORMAT_VERSION, "checkpoint": str(ckpt)}
    if data:
        if not isinstance(tok, Tokenizer):
            raise CheckpointError(f"{ckpt}'s tokenizer is not a nanoseek tokenizer; bits per byte needs one")
        bpb = validation_bpb(model, data, seq_len=seq_len or min(model.config.max_position_embeddings, 512),
                             batch_size=eval_batch_size, max_batches=eval_batches, tokenizer=tok, dtype=dtype)
        report["bpb"] = {"data": str(data), **bpb}
        model.to(dtype)
    if problems:
        engine = Engine(model, tok, eos_token_ids=generation_eos_ids(ckpt), max_batch=batch_size)
        report["tasks"] = evaluate_tasks(engine, problems, progress=progress, **sampling)
    return report
