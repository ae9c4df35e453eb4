"""`nanoseek generate`: one-shot and scripted generation, JSONL out; and the sampling flags and engine loading
that `nanoseek chat` shares."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nanoseek.cli.common import (SPECULATIVE_HELP, UserError, add_compile_args, add_device_args, for_flag, nonneg_int,
                                 output_file, positive_int, resolve_device, resolve_dtype, speculative_arg)
from nanoseek.config import ModelConfig
from nanoseek.engine import Engine, RunStats, SamplingParams, resolve_checkpoint
from nanoseek.engine.prompts import decode_utf8, generate_batches, parse_prompts
from nanoseek.io import atomic_write_text

def add_sampling_args(p: argparse.ArgumentParser, temperature: float, max_tokens: int) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", "--max-new-tokens", dest="max_tokens", type=positive_int, default=max_tokens,
                   help=f"new tokens per answer at most (default {max_tokens}); prompt + this must fit the context")
    g.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature:g})")
    g.add_argument("--top-k", type=nonneg_int, default=0, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability")
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=seed_int, default=None, help="makes sampled output reproducible (0 to 2^64-1)")
    g.add_argument("--speculative", type=speculative_arg, default="auto", metavar="K", help=SPECULATIVE_HELP)
    add_compile_args(g, default=None)


def seed_int(s: str) -> int:
    """argparse type: a seed torch's generators take (an unsigned 64-bit integer)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2^64-1, got {s!r}") from None
    if not 0 <= v < 1 << 64:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2^64-1 (a 64-bit seed), got {s}")
    return v


def sampling_params(args, **extra):
    return SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, presence_penalty=args.presence_penalty,
                          frequency_penalty=args.frequency_penalty, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, **extra).validate()


def load_engine(args):
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    with for_flag("--checkpoint"):  # no model there
        ckpt = resolve_checkpoint(args.checkpoint)
    if args.speculative not in (0, "auto") and ModelConfig.load(ckpt).num_nextn_predict_layers == 0:
        raise UserError(f"--speculative needs an MTP module and {ckpt} has none (num_nextn_predict_layers = 0)")
    with for_flag("--checkpoint"):  # e.g. a malformed generation_config.json
        engine = Engine.load(ckpt, dtype=dtype, device=device, compile="auto" if args.compile is None else args.compile,
                             speculative=args.speculative, max_batch=getattr(args, "batch_size", 32))
    if args.compile is None and not engine.compiled:
        print("note: decoding eagerly; compiled decoding is ~1.5x faster. --compile once (or `nanoseek serve`) builds "
              "it in a minute or two and keeps it on disk; from then on this command compiles from there",
              file=sys.stderr)
    return engine


# ---- generate --------------------------------------------------------------------------------------------
def _read_prompts(args) -> list[dict]:
    """Each prompt as {"prompt": text} or {"messages": [...]} (chat)."""
    items: list[dict] = [{"prompt": p} for p in args.prompt or []]
    source = args.prompts_file
    if source is None and not items and not sys.stdin.isatty():
        source = "-"
    if source == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        items += parse_prompts(decode_utf8(raw, "stdin"), "stdin")
    elif source is not None:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"--prompts-file {path}: no such file")
        items += parse_prompts(decode_utf8(path.read_bytes(), f"--prompts-file {path}"), str(path))
    if not items:
        raise UserError("no prompts: pass --prompt TEXT, --prompts-file FILE (one per line, or JSONL), or pipe them in")
    return items


def cmd_generate(args) -> None:
    """Generate for one or many prompts (batched) and write one JSON line per prompt."""
    output_file(args.output, "-o/--output")
    for p in args.prompt or []:
        decode_utf8(os.fsencode(p), "--prompt")  # undecodable command-line bytes arrive as surrogates
    items = _read_prompts(args)
    params = sampling_params(args, stop=args.stop or [], logprobs=args.logprobs, prompt_logprobs=args.prompt_logprobs)
    engine = load_engine(args)
    if engine.tokenizer is None:
        raise UserError(f"{args.checkpoint} has no tokenizer.json: text prompts need one (copy the tokenizer "
                        "directory's files into the checkpoint)")
    out_lines: list[str] = []
    total = RunStats()
    for records, stats in generate_batches(engine, items, params, batch_size=args.batch_size, chat=args.chat,
                                           system=args.system):
        total += stats
        for rec in records:
            line = json.dumps(rec, ensure_ascii=False)
            if args.output:
                out_lines.append(line)
            else:
                print(line, flush=True)
    if args.output:
        atomic_write_text(args.output, "".join(line + "\n" for line in out_lines))
        print(f"wrote {len(out_lines)} completions to {args.output}", file=sys.stderr)
    pre = total.prompt_tokens / total.prefill_seconds if total.prefill_seconds else 0.0
    acc = f", {total.acceptance_rate:.0%} of drafts accepted" if total.drafted else ""
    print(f"{len(items)} prompt(s): {total.prompt_tokens} prompt tokens ({pre:,.0f} tok/s prefill), "
          f"{total.generated_tokens} new tokens ({total.decode_tokens_per_second:,.0f} tok/s decode){acc}; latent "
          f"cache {total.cache_bytes_per_token} B/token", file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate from prompts (args, file or stdin) and write JSONL",
                       description=cmd_generate.__doc__)
    p.add_argument("--checkpoint", required=True,
                   help="model directory (nanoseek or Hugging Face) with tokenizer.json, or a training run directory "
                        "(its latest checkpoint)")
    p.add_argument("--prompt", action="append", help="a prompt; repeat for several (batched together)")
    p.add_argument("--prompts-file", metavar="PATH", help="one prompt per line, or JSONL objects with \"prompt\" "
                   "or \"messages\"; '-' reads stdin (also the default when stdin is piped and no --prompt)")
    p.add_argument("--chat", action="store_true", help="wrap each text prompt as a user turn in the chat template")
    p.add_argument("--system", help="with --chat: a system prompt")
    p.add_argument("--stop", action="append", help="stop string (repeatable); never part of the output text")
    p.add_argument("--logprobs", type=nonneg_int, default=None, metavar="N",
                   help="report each generated token's logprob and the N most likely alternatives")
    p.add_argument("--prompt-logprobs", type=nonneg_int, default=None, metavar="N", help="the same for prompt tokens")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts decoded together (default 16)")
    p.add_argument("--output", "-o", help="write the JSONL here (atomically) instead of stdout")
    add_sampling_args(p, temperature=1.0, max_tokens=128)
    add_device_args(p)
    p.set_defaults(func=cmd_generate)
