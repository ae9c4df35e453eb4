"""What every subcommand shares: device and dtype options, argparse types, the user-error type it raises."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from nanoseek.data import tasks
from nanoseek.errors import UserError
from nanoseek.runtime import resolve_device  # noqa: F401  (every command's --device, here with its flags)
from nanoseek.train.probe import AccuracyProbe

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def add_device_args(p: argparse.ArgumentParser, dtype_default: str = "float32") -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run (auto: cuda when available, else cpu)")
    p.add_argument("--dtype", default=dtype_default, choices=sorted(DTYPES),
                   help=f"weights/compute dtype (default {dtype_default})")


def resolve_dtype(name: str):
    return getattr(torch, DTYPES[name])


@contextlib.contextmanager
def for_flag(flag: str | dict[str, str]):
    """A user error raised while a flag's value is read names the flag: `--checkpoint run/x: no config.json`.
    With {library param: flag}, the error's param says which flag it was: `--difficulty: difficulty 9 ...`."""
    try:
        yield
    except UserError as e:
        if isinstance(flag, dict):
            if e.param in flag:
                e.message, e.param = f"{flag[e.param]}: {e.message}", flag[e.param]
        elif e.param is None or not e.param.startswith("-"):
            e.message, e.param = f"{flag} {e.message}", flag
        raise


def positive_int(s: str) -> int:
    """argparse type: an integer > 0, with a message naming the bad value."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def k_values(text: str) -> list[int]:
    """argparse type: the k of pass@k and maj@k, "1,4,8"."""
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give k values such as 1,4,8, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"k values must be positive integers, got {text!r}")
    return ks


def speculative_arg(s: str) -> int | str:
    """argparse type of --speculative: "auto" or a number of draft tokens >= 0."""
    if s != "auto" and not s.isdigit():
        raise argparse.ArgumentTypeError(f"must be auto or a number of draft tokens >= 0, got {s!r}")
    return s if s == "auto" else int(s)


SPECULATIVE_HELP = ("MTP draft tokens per step: auto (default) drafts one in the steps where that measures faster "
                    "(greedy requests), K always drafts K, 0 never")


def add_compile_args(group, default: bool | None) -> None:
    """--compile / --eager; default None: compiled when the on-disk compile cache holds this model already."""
    x = group.add_mutually_exclusive_group()
    x.add_argument("--compile", dest="compile", action="store_true", default=default,
                   help="torch.compile the decode steps at start" + (" (the default)" if default else "") + ": ~1.5x "
                   "faster; a model's first start takes a minute or two, later ones seconds (~/.cache/nanoseek)")
    x.add_argument("--eager", dest="compile", action="store_false", help="decode without compiling")


def nonneg_int(s: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {s}")
    return v


def output_file(path: str | None, flag: str) -> Path | None:
    """A file the command will write, checked before any work: not a directory, in a directory (or a new one)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p} is a directory; give a file name", param=flag)
    if p.parent.exists() and not p.parent.is_dir():
        raise UserError(f"{flag} {p}: {p.parent} is a file, not a directory", param=flag)
    return p


def read_problems_arg(path: str, checker_spec: str) -> list:
    """The problems of a --problems FILE, with --checker (a name, or a JSON object) as the default checker;
    bad input of either becomes a UserError naming its flag."""
    try:
        checker = tasks.make_checker(checker_spec)
    except ValueError as e:
        raise UserError(f"--checker: {e}", param="--checker") from None
    with for_flag("--problems"):
        return tasks.read_problems(path, default_checker=checker)


def task_names(text: str, other: str = "") -> list[str]:
    """The built-in generated tasks a --task value names ("all", or comma-separated); other: what else the
    command takes instead, for the error message."""
    names = tasks.generated_tasks() if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in tasks.TASKS or not tasks.TASKS[name].generated:
            raise UserError(f"--task: unknown task {name!r}; use one of {', '.join(tasks.generated_tasks())} "
                            f"(comma-separated) or all{other}", param="--task")
    if not names:
        raise UserError("--task names no task", param="--task")
    return names


def add_probe_args(p: argparse.ArgumentParser, style: str) -> None:
    """--eval-problems-file: held-out problems the training commands answer (greedily, in `style`) at each
    evaluation, logging task_accuracy."""
    p.add_argument("--eval-problems-file", metavar="FILE",
                   help=f"problems JSONL (`nanoseek tasks generate`) the model answers greedily at each evaluation, "
                        f"asked in the {style} style; log.jsonl gets task_accuracy (and per task)")


def probe_from_args(args: argparse.Namespace, tokenizer, style: str, info):
    """The AccuracyProbe of --eval-problems-file, or None without one."""
    if not getattr(args, "eval_problems_file", None):
        return None

    with for_flag("--eval-problems-file"):
        problems = tasks.read_problems(args.eval_problems_file)
    if style == "chat" and not hasattr(tokenizer, "render_chat"):
        raise UserError("--eval-problems-file asks in the chat template, which needs a nanoseek tokenizer",
                        param="--eval-problems-file")
    return AccuracyProbe(problems, tokenizer, style=style, device=info.device, rank=info.rank,
                         world_size=info.world_size)
