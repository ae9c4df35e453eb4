"""`nanoseek tasks list|show|generate|check`: the verifiable task suite, its files, and scoring completions."""

from __future__ import annotations

import json
import sys

from nanoseek.cli.common import (UserError, for_flag, k_values, nonneg_int, output_file, positive_int,
                                 read_problems_arg, task_names)
from nanoseek.data import tasks
from nanoseek.data.tasks import strategies
from nanoseek.eval import metrics
from nanoseek.eval.completions import score_completions
from nanoseek.io import atomic_write_text
from nanoseek.train import rewards
from nanoseek.train.rewards import DEFAULT_WEIGHTS

FORMATS = ("problems", "sft", "text")
FLAGS = {k: f"--{k}" for k in ("difficulty", "n", "split", "group", "style", "strategies")}  # a DataError's param


def cmd_list(args) -> None:
    """List the built-in tasks with their difficulty levels and an example prompt."""
    for name in tasks.generated_tasks():
        t = tasks.TASKS[name]
        example = tasks.generate(t, "train", 1, 1, seed=0)[0]
        print(f"{name}: {t.summary}")
        for level, text in enumerate(t.levels, 1):
            print(f"  {level}  {text}")
        print(f"  e.g. {example.prompt}  ->  {example.answer}")
    print("custom: your own JSONL of {\"prompt\", \"answer\"} with a checker (exact, numeric, choice); "
          "see `nanoseek tasks check --help`")


def cmd_show(args) -> None:
    """Print a few problems with their worked solutions, as pretraining text shows them."""
    for name in task_names(args.task):
        with for_flag(FLAGS):
            problems = tasks.generate(name, args.split, args.n, args.difficulty, seed=args.seed, unique=False,
                                      wording=args.wording)
            ways = strategies.assign(problems, args.strategies, args.seed)
        for p, how in zip(problems, ways):
            print(f"# {name}, difficulty {p.difficulty}, {args.split}, id {p.id}, {how}")
            print(tasks.render_text(p, args.style, how), end="\n\n")


def cmd_generate(args) -> None:
    """Generate problems of the built-in tasks and write them as problems JSONL (RL, evaluation), SFT chat
    JSONL with worked reasoning, or pretraining text."""
    out = output_file(args.out, "--out")
    problems = []
    for name in task_names(args.task):
        with for_flag(FLAGS):
            problems += tasks.generate(name, args.split, args.n, args.difficulty, seed=args.seed,
                                       unique=not args.allow_repeats, wording=args.wording)
    with for_flag(FLAGS):
        written = "" if args.format == "problems" else f"; solutions {strategies.summary(problems, args.strategies)}"
        if args.format == "problems":
            count, what = tasks.write_problems(problems, out), "problems"
        elif args.format == "sft":
            count, what = tasks.write_sft(problems, out, strategies=args.strategies), "SFT conversations" + written
        else:
            count = tasks.write_text(problems, out, style=args.style, group=args.group, strategies=args.strategies)
            what = f"{args.style} text documents ({len(problems)} problems){written}"
    print(f"wrote {count:,} {what} ({args.task}, {args.split} split, difficulty {args.difficulty}, seed "
          f"{args.seed}) to {out}")


def cmd_check(args) -> None:
    """Score completions against problems: accuracy, format, pass@k and maj@k per task, as a markdown table
    (and JSON). Completions are matched to problems by their "prompt"."""
    problems = read_problems_arg(args.problems, args.checker)
    with for_flag({"reward": "--reward"}):
        scorer = rewards.Rewards(args.reward, seed=args.seed)
    with for_flag("--completions"):
        records = list(tasks.read_jsonl(args.completions))
        rows, scored, with_think = score_completions(problems, records, scorer, args.k)
    if not scored:
        raise UserError(f"--completions {args.completions}: no completions in the file", param="--completions")
    print(metrics.markdown_table(rows), end="")
    if with_think == 0:
        print("note: no completion contains </think>; decode with special tokens kept (skip_special_tokens="
              "False) or the reasoning and the answer cannot be told apart", file=sys.stderr)
    if args.json:
        doc = {"rows": rows, "reward": repr(scorer), "ks": sorted(set(args.k))}
        atomic_write_text(args.json, metrics.to_json(doc))
        print(f"wrote {args.json}")
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored))
        print(f"wrote {len(scored):,} scored completions to {args.out}")


def register(sub) -> None:
    p = sub.add_parser("tasks", help="verifiable reasoning tasks: list, generate data, score completions",
                       description="The built-in verifiable task suite (and your own JSONL problems).")
    tsub = p.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND", required=True)
    t = tsub.add_parser("list", help="the tasks and their difficulty levels", description=cmd_list.__doc__)
    t.set_defaults(func=cmd_list)

    def common(t):
        t.add_argument("--task", required=True, help="a task, several comma-separated, or all")
        t.add_argument("--split", default="train", choices=["train", "val", "test"], help="default train")
        t.add_argument("--difficulty", default="1", help="a level (2), a range (1-3) or a list (1,2,4): each "
                       "problem draws one of them (default 1)")
        t.add_argument("--seed", type=nonneg_int, default=0, help="same seed, same problems (default 0)")
        t.add_argument("--wording", default="canonical", choices=["canonical", "train", "heldout"],
                       help="how problems are asked: canonical (each task's one original template), train (dozens "
                            "of wordings) or heldout (wordings kept out of train, to test on); default canonical")
        t.add_argument("--strategies", default="worked", help="how solutions are written: direct, worked, checked "
                       "(check and redo), or a mix: direct=0.8,worked=0.2 (default worked)")
        t.add_argument("--style", default="plain", choices=["plain", "chat"],
                       help="text style: plain (prompt, steps, 'Answer: X') or chat (the chat rendering as text)")

    t = tsub.add_parser("show", help="print a few problems with worked solutions", description=cmd_show.__doc__)
    common(t)
    t.add_argument("--n", type=positive_int, default=3, help="problems per task (default 3)")
    t.set_defaults(func=cmd_show)

    t = tsub.add_parser("generate", help="write problems, SFT chat data or pretraining text",
                        description=cmd_generate.__doc__)
    common(t)
    t.add_argument("--n", type=positive_int, required=True, help="problems per task")
    t.add_argument("--format", default="problems", choices=FORMATS,
                   help="problems: JSONL for RL/eval; sft: chat JSONL with reasoning; text: pretraining documents "
                        "(.jsonl -> {\"text\"} lines, else blank-line-separated text)")
    t.add_argument("--out", "-o", required=True, metavar="FILE", help="file to write (atomically)")
    t.add_argument("--group", type=positive_int, default=1, help="text: problems per document (default 1)")
    t.add_argument("--allow-repeats", action="store_true",
                   help="allow a problem more than once (needed when n exceeds what a split holds at low levels)")
    t.set_defaults(func=cmd_generate)

    t = tsub.add_parser("check", help="score completions: accuracy, format, pass@k, maj@k",
                        description=cmd_check.__doc__)
    t.add_argument("--problems", required=True, metavar="FILE",
                   help="problems JSONL: generated, or your own {\"prompt\", \"answer\", [\"checker\"]} lines")
    t.add_argument("--completions", required=True, metavar="FILE",
                   help="JSONL with \"prompt\" and \"completion\" or \"text\" (special tokens kept), or \"content\" "
                        "[+ \"reasoning_content\"]; several lines per prompt are several samples")
    t.add_argument("--checker", default="exact",
                   help="for your own problems without one: exact, numeric, choice, or JSON such as "
                        "'{\"name\": \"numeric\", \"tolerance\": 0.01}' (default exact)")
    t.add_argument("--reward", default=DEFAULT_WEIGHTS, help=f"rewards and weights (default {DEFAULT_WEIGHTS})")
    t.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random reward (default 0)")
    t.add_argument("--k", type=k_values, default=[1], help="k values for pass@k and maj@k, e.g. 1,4,8 (default 1)")
    t.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    t.add_argument("--out", "-o", metavar="FILE", help="write every completion with its answer and rewards")
    t.set_defaults(func=cmd_check)
