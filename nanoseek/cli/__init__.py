"""The `nanoseek` command: a layer on top of the library that nothing in the library imports.

One module per stage's subcommands, each with a `register(subparsers)`; this one assembles the parser and
turns every `nanoseek.errors.UserError` into one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

import nanoseek
from nanoseek.cli import chat, cost, data, evaluate, generate, model, report, rl, serve, sft, speedrun, tasks, train
from nanoseek.errors import UserError
from nanoseek.io import run_lock
from nanoseek.runtime import tune_allocator

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
# commands that write a run folder, and the argument naming it: one process at a time may write each folder
RUN_FOLDERS = {"pretrain": ("out", "--out"), "sft": ("out", "--out"), "rl": ("out", "--out"),
               "speedrun": ("run", "RUN")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek", description="Train, RL-tune and serve DeepSeek-V3-architecture "
                                     "models on a budget.")
    parser.add_argument("--version", action="version", version=f"nanoseek {nanoseek.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in (speedrun, model, data, tasks, train, sft, rl, evaluate, generate, chat, serve, cost, report):
        stage.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE

    tune_allocator()
    try:
        with _run_lock(args), warnings.catch_warnings():
            warnings.showwarning = _warning_line(args.command)
            args.func(args)
    except (UserError, FileNotFoundError) as e:
        print(f"nanoseek {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return EXIT_BROKEN_PIPE
    return 0


def _run_lock(args: argparse.Namespace):
    """The lock on the run folder the command writes (none for other commands, for a path that is a file, which
    the command itself refuses, and for the other processes of a torchrun job: rank 0 holds it for them)."""
    attr, flag = RUN_FOLDERS.get(args.command, (None, None))
    path = getattr(args, attr, None) if attr else None
    if path is None or Path(path).is_file() or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return run_lock(path, flag)


def _warning_line(command: str):
    """Python warnings (a mismatched tokenizer, a checkpoint without its MTP weights) as one line each."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"nanoseek {command}: warning: {message}", file=sys.stderr)

    return show
