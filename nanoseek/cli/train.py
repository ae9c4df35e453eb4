"""`nanoseek pretrain`: pretrain a model on prepared token shards (one process or torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nanoseek.cli.common import UserError, add_probe_args, for_flag, probe_from_args
from nanoseek.config import PRESETS, ModelConfig, parse_overrides, preset
from nanoseek.hf import load_model
from nanoseek.model import DeepSeekV3, count_params
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.config import TrainConfig, add_config_args, given_settings
from nanoseek.train.pretrain import PretrainTask, check_model_tokenizer
from nanoseek.train.stage import run_stage, stage_settings


def cmd_pretrain(args: argparse.Namespace) -> None:
    """Pretrain a DeepSeek-V3-architecture model on token shards from `nanoseek data prepare`.

    Writes RUN/log.jsonl (one JSON object per step, evaluation and checkpoint) and RUN/checkpoints/step_N/
    (Hugging Face model directories with the tokenizer and a train_state/ folder; RUN/checkpoints/latest names
    the newest). Under torchrun every process runs this command; rank 0 logs and writes.
    """
    data, out = Path(args.data), Path(args.out)
    if args.model and (args.resume or args.init_from):
        raise UserError("--model overrides the --preset of a new model; it cannot change a resumed or --init-from one")
    if not data.is_dir():
        raise UserError(f"--data {data} is not a directory; create it with `nanoseek data prepare --input TEXT "
                        f"--tokenizer TOK --output {data}`")
    cfg, changes, ckpt = stage_settings(out, args.resume, given_settings(args), TrainConfig)
    tok = Tokenizer.load(data / "tokenizer")
    if args.resume:
        model_cfg, source = ModelConfig.load(ckpt), str(ckpt)
    elif args.init_from:
        model_cfg, source = ModelConfig.load(args.init_from), args.init_from
        check_model_tokenizer(args.init_from, tok, data)
    else:
        with for_flag("--model"):
            overrides = parse_overrides(args.model)
        model_cfg, source = preset(args.preset, **{**overrides, "vocab_size": tok.vocab_size,
                                                   "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                                                   "pad_token_id": tok.pad_id}), f"preset {args.preset}"
    if model_cfg.vocab_size < tok.vocab_size:
        raise UserError(f"the model's vocab_size ({model_cfg.vocab_size}) is smaller than the data's tokenizer "
                        f"({tok.vocab_size}); use a checkpoint trained with this tokenizer")
    if cfg.seq_len > model_cfg.max_position_embeddings:
        raise UserError(f"--seq-len {cfg.seq_len} exceeds the model's max_position_embeddings "
                        f"({model_cfg.max_position_embeddings})")

    def build(info, say):
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        init = args.init_from and not args.resume
        model = load_model(args.init_from, dtype=torch.float32) if init else DeepSeekV3(model_cfg)
        pc = count_params(model.config)
        say(f"model: {source}: {pc.total / 1e6:.2f}M parameters ({pc.active / 1e6:.2f}M active), vocab "
            f"{model.config.vocab_size}; data: {data}; device: {info.device} x {info.world_size}, {cfg.dtype}")
        task = PretrainTask(data, cfg, device=info.device, rank=info.rank, world_size=info.world_size, tokenizer=tok,
                            probe=probe_from_args(args, tok, "plain", info))
        say(task.describe_eval(cfg))
        say(f"schedule: {cfg.schedule} over {cfg.steps} steps, peak lr {cfg.lr:g}, warm-up {cfg.warmup} steps"
            + (" (default: 2% of --steps, 1 to 20)" if cfg.warmup_steps is None else ""))
        return model, task

    run_stage(cfg, out, resume=args.resume, changes=changes, tokenizer=tok, build=build)


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a model on prepared token shards (single process or torchrun)",
                       description=cmd_pretrain.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR", help="directory written by `nanoseek data prepare`")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory for the log and checkpoints")
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS),
                   help="model shape (default cpu-small); vocab_size is taken from the data's tokenizer")
    p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the preset's ModelConfig (HF config.json names), e.g. --model "
                        "num_nextn_predict_layers=0 to train without MTP; repeatable")
    p.add_argument("--init-from", metavar="DIR", help="start from this model directory's weights instead of a "
                                                      "random init (a checkpoint or imported HF model)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (bit for bit); flags given now "
                        "override its saved settings, except --optimizer, --seq-len and --seed")
    add_probe_args(p, "plain")
    add_config_args(p)
    p.set_defaults(func=cmd_pretrain)
