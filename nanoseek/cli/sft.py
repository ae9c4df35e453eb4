"""`nanoseek sft`: supervised fine-tuning of a checkpoint on chat conversations (one process or torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nanoseek.cli.common import UserError, add_probe_args, for_flag, probe_from_args
from nanoseek.config import ModelConfig
from nanoseek.engine import resolve_checkpoint
from nanoseek.hf import load_model
from nanoseek.model import DeepSeekV3, count_params
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.config import add_config_args, given_settings
from nanoseek.train.sft import SFTConfig, SFTTask
from nanoseek.train.stage import run_stage, stage_settings


def cmd_sft(args: argparse.Namespace) -> None:
    """Fine-tune a model on chat conversations: JSONL lines of OpenAI-style {"messages": [...]} (system, user
    and assistant turns; an assistant turn may carry "reasoning" or "reasoning_content", rendered as
    <think>...</think> before its content). The loss covers the assistant's tokens only, as a mean over every
    assistant token of the optimizer step. `nanoseek tasks generate --format sft` writes such files.

    Writes RUN/log.jsonl (per step: loss, main_loss, target_tokens, pack_fill, epoch, ...; per evaluation:
    val_loss and val_accuracy on held-out conversations) and RUN/checkpoints/step_N/ (Hugging Face model
    directories with the checkpoint's tokenizer and a train_state/ folder). Under torchrun every process runs
    this command; rank 0 logs and writes.
    """
    data, out = Path(args.data), Path(args.out)
    for flag, path in (("--data", data), ("--val-data", args.val_data and Path(args.val_data))):
        if path is not None and not path.is_file():
            raise UserError(f"{flag} {path}: {'is a directory' if path.is_dir() else 'no such file'}; give a JSONL "
                            'file with one {"messages": [...]} conversation per line (`nanoseek tasks generate '
                            "--format sft` writes one)", param=flag)
    cfg, changes, ckpt = stage_settings(out, args.resume, given_settings(args, SFTConfig), SFTConfig)
    if args.resume:
        source = ckpt
    elif not args.checkpoint:
        raise UserError("--checkpoint DIR is required: the model to fine-tune (a checkpoint directory, or a "
                        "training run whose latest checkpoint to take)", param="--checkpoint")
    else:
        with for_flag("--checkpoint"):
            source = resolve_checkpoint(args.checkpoint)
    model_cfg = ModelConfig.load(source)
    if not (source / "tokenizer.json").is_file():
        raise UserError(f"{source} has no tokenizer.json: SFT renders conversations with the checkpoint's own "
                        "tokenizer (its chat template); copy the tokenizer files the model was trained with into it",
                        param="--checkpoint")
    tok = Tokenizer.load(source)
    if model_cfg.vocab_size < tok.vocab_size:
        raise UserError(f"the model's vocab_size ({model_cfg.vocab_size}) is smaller than its tokenizer's "
                        f"({tok.vocab_size}) in {source}")
    if cfg.seq_len > model_cfg.max_position_embeddings:
        raise UserError(f"--seq-len {cfg.seq_len} exceeds the model's max_position_embeddings "
                        f"({model_cfg.max_position_embeddings})", param="--seq-len")

    def build(info, say):
        if args.resume and args.checkpoint:
            say(f"resume: the weights come from {source}; --checkpoint {args.checkpoint} is not used")
        task = SFTTask(data, cfg, tokenizer=tok, device=info.device, rank=info.rank, world_size=info.world_size,
                       val_data=args.val_data, mtp_depth=model_cfg.num_nextn_predict_layers,
                       probe=probe_from_args(args, tok, "chat", info))
        torch.manual_seed(cfg.seed)
        # a resumed run's weights are loaded by the loop from its checkpoint
        model = DeepSeekV3(model_cfg) if args.resume else load_model(source, dtype=torch.float32)
        pc = count_params(model.config)
        say(f"model: {source}: {pc.total / 1e6:.2f}M parameters ({pc.active / 1e6:.2f}M active), vocab "
            f"{model.config.vocab_size}; device: {info.device} x {info.world_size}, {cfg.dtype}")
        for line in task.describe():
            say(line)
        say(f"schedule: {cfg.schedule} over {cfg.steps} steps, peak lr {cfg.lr:g}, warm-up {cfg.warmup} steps; "
            f"{cfg.batch_size} x {cfg.grad_accum} x {info.world_size} rows of {cfg.seq_len} per step")
        return model, task

    run_stage(cfg, out, resume=args.resume, changes=changes, tokenizer=tok, build=build)


def register(sub) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning on chat conversations (single process or torchrun)",
                       description=cmd_sft.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="DIR",
                   help="the model to fine-tune: a checkpoint directory (with its tokenizer) or a training run "
                        "(its latest checkpoint); not needed with --resume")
    p.add_argument("--data", required=True, metavar="FILE", help="chat JSONL, one {\"messages\": [...]} per line")
    p.add_argument("--val-data", metavar="FILE", help="held-out chat JSONL for validation (default: --val-fraction "
                                                      "of --data, chosen by hash)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory for the log and checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (bit for bit); flags given now "
                        "override its saved settings, except --optimizer, --seq-len, --seed and --val-fraction")
    add_probe_args(p, "chat")
    add_config_args(p, SFTConfig)
    p.set_defaults(func=cmd_sft)
