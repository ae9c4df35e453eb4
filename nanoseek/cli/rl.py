"""`nanoseek rl`: GRPO reinforcement learning with rule-checked rewards (one process or torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nanoseek.cli.common import UserError, for_flag
from nanoseek.data.tasks import generate, get_task, read_problems
from nanoseek.engine import load_tokenizer, resolve_checkpoint
from nanoseek.hf import load_model
from nanoseek.model import count_params
from nanoseek.train.config import add_config_args, given_settings
from nanoseek.train.grpo import GRPOConfig, GRPOTask, frozen_copy
from nanoseek.train.pretrain import check_model_tokenizer
from nanoseek.train.stage import run_stage, stage_settings

NOT_FOR_RL = {
    "seq_len": "a sequence is a prompt and its completion, which --max-new-tokens bounds (the rollout engine "
               "sizes itself to the longest prompt)",
    "grad_accum": "each step trains on every completion of its generation, in micro-batches of --batch-size",
    "mtp_weight": "GRPO trains the next-token policy only (the MTP module gets no gradient)",
    "eval_batches": "evaluation answers --eval-problems validation problems",
}


def cmd_rl(args: argparse.Namespace) -> None:
    """Reinforcement learning with GRPO on a verifiable task: for each prompt the model samples a group of
    completions, a checker scores them, and the policy moves towards the better ones of each group.

    Starts from --checkpoint (a pretrained or SFT model with a nanoseek tokenizer; also the KL reference with
    --beta > 0). Writes RUN/log.jsonl (reward, accuracy, completion lengths, KL, clip fraction, entropy per
    step; validation accuracy per evaluation) and RUN/checkpoints/step_N/ like `nanoseek pretrain`.
    --reward random is the control run: it shows what noise alone does.
    """
    for name, why in NOT_FOR_RL.items():  # shared training flags GRPO has no use for: say so, do not ignore them
        if name in vars(args):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} does not apply to rl: {why}; leave it out", param=flag)
    out = Path(args.out)
    cfg, changes, ckpt = stage_settings(out, args.resume, given_settings(args, GRPOConfig), GRPOConfig)
    with for_flag("--checkpoint"):
        start = resolve_checkpoint(args.checkpoint)
    tok = load_tokenizer(start)
    if not hasattr(tok, "render_chat"):
        raise UserError(f"--checkpoint {start} has no nanoseek tokenizer (tokenizer.json with the chat special "
                        "tokens): RL prompts are chat turns", param="--checkpoint")
    if args.resume:
        check_model_tokenizer(ckpt, tok, start)
    if cfg.problems:
        train_problems = read_problems(cfg.problems)
        eval_problems = read_problems(args.eval_problems_file) if args.eval_problems_file else train_problems
    else:
        get_task(cfg.task)  # a clear error for an unknown task
        n_gen = cfg.steps // cfg.updates_per_generation
        # repeats allowed: a long run goes through the training problems in epochs
        train_problems = generate(cfg.task, "train", min(cfg.prompts_per_step * n_gen, 5000), cfg.difficulty,
                                  seed=cfg.seed, unique=False)
        eval_problems = generate(cfg.task, "val", cfg.eval_problems, cfg.difficulty, seed=cfg.seed)
    eval_problems = eval_problems[:cfg.eval_problems]

    def build(info, say):
        model = load_model(start, dtype=torch.float32)
        reference = frozen_copy(model).to(info.device) if cfg.beta > 0 else None
        pc = count_params(model.config)
        say(f"model: {start}: {pc.total / 1e6:.2f}M parameters ({pc.active / 1e6:.2f}M active); task: "
            f"{cfg.problems or cfg.task} (difficulty {cfg.difficulty}), {len(train_problems)} training problems, "
            f"{len(eval_problems)} validation; rewards: {cfg.reward}; device: {info.device} x {info.world_size}")
        cfg.grad_accum = cfg.micro_batches(info.world_size)
        task = GRPOTask(cfg, tok, train_problems, eval_problems, device=info.device, rank=info.rank,
                        world_size=info.world_size, reference=reference)
        say(f"GRPO ({cfg.loss_type}): {cfg.prompts_per_step} prompts x {cfg.group_size} completions per "
            f"generation, {cfg.updates_per_generation} update(s) each, {cfg.grad_accum} micro-batch(es) of "
            f"{cfg.batch_size}; temperature {cfg.temperature}, up to {cfg.max_new_tokens} new tokens, clip "
            f"[{1 - cfg.clip_eps:g}, {1 + cfg.eps_high:g}], beta {cfg.beta:g}")
        return model, task

    run_stage(cfg, out, resume=args.resume, changes=changes, tokenizer=tok, build=build)


def register(sub) -> None:
    p = sub.add_parser("rl", help="GRPO reinforcement learning with rule-checked rewards on a verifiable task",
                       description=cmd_rl.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="the model to start from (a checkpoint or training run directory with a nanoseek tokenizer)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory for the log and checkpoints")
    p.add_argument("--eval-problems-file", metavar="FILE", help="with --problems: validation problems (JSONL)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (bit for bit); flags given now "
                        "override its saved settings, except the task and rollout shape")
    add_config_args(p, GRPOConfig)
    p.set_defaults(func=cmd_rl)
