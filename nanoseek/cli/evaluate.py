"""`nanoseek eval`: a checkpoint's validation bits per byte and its task accuracy (pass@k, maj@k)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from nanoseek.cli.common import (UserError, add_device_args, for_flag, k_values, nonneg_int, positive_int,
                                 output_file, read_problems_arg, resolve_device, resolve_dtype, task_names)
from nanoseek.data import tasks
from nanoseek.engine import ContextLengthError, resolve_checkpoint
from nanoseek.eval import completion_records, evaluate_checkpoint, results_markdown
from nanoseek.eval.metrics import to_json
from nanoseek.io import atomic_write_text


def load_problems(args) -> list:
    """The problems of --problems FILE or of the built-in --task(s); when a split holds fewer distinct problems
    than --n at a low difficulty, all it holds, with a note."""
    if args.problems:
        problems = read_problems_arg(args.problems, args.checker)
        return problems[:args.n] if args.n else problems
    names = task_names(args.task, ", or --problems FILE for your own")
    with for_flag({"difficulty": "--difficulty"}):
        problems, short = tasks.problem_set(names, args.split, args.n or 200, args.difficulty, seed=args.seed)
    for name, found in short.items():
        print(f"note: the {args.split} split holds only {found} distinct {name} problems at difficulty "
              f"{args.difficulty} (low levels are small); evaluating all {found}. Add harder levels "
              f"(--difficulty 1-3) for more", file=sys.stderr)
    return problems


def cmd_eval(args) -> None:
    """Evaluate a checkpoint: validation bits per byte on token shards (--data, as pretraining computes it) and,
    for a built-in task (--task) or your own problems (--problems), accuracy, pass@k (unbiased, from --samples
    answers per problem) and majority-vote accuracy maj@k, generated in batches through the engine. Prints a
    markdown table; --out writes the results as JSON, --completions every sample as JSONL (which `nanoseek tasks
    check` reads back)."""
    if not (args.data or args.task or args.problems):
        raise UserError("nothing to evaluate: give --data DIR (bits per byte), --task NAME or --problems FILE "
                        "(task accuracy), or both")
    if args.task and args.problems:
        raise UserError("give --task or --problems, not both", param="--task")
    if max(args.k) > args.samples:
        raise UserError(f"--k {max(args.k)} needs at least that many --samples per problem (got --samples "
                        f"{args.samples})", param="--k")
    out_json, out_md = output_file(args.out, "--out"), output_file(args.markdown, "--markdown")
    out_comp = output_file(args.completions, "--completions")
    if args.data and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data} is not a directory: give the output of `nanoseek data prepare`",
                        param="--data")
    if args.after_turns and args.style != "chat":
        raise UserError("--after-turns asks in a conversation, which the plain style has not: use --style chat",
                        param="--after-turns")
    problems = load_problems(args) if (args.task or args.problems) else []
    if args.after_turns and len(problems) < 2:
        raise UserError("--after-turns asks other problems of the set first: give at least two problems",
                        param="--after-turns")
    with for_flag("--checkpoint"):
        ckpt = resolve_checkpoint(args.checkpoint)  # named by its flag, before any work
    bar = tqdm(total=len(problems), unit="problem", desc="eval", file=sys.stderr) if (
        problems and sys.stderr.isatty()) else None

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    try:
        report = evaluate_checkpoint(
            ckpt, problems, data=args.data, seq_len=args.seq_len, eval_batch_size=args.eval_batch_size,
            eval_batches=args.eval_batches, device=resolve_device(args.device), dtype=resolve_dtype(args.dtype),
            batch_size=args.batch_size, progress=progress, samples=args.samples, k=args.k,
            temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_tokens, seed=args.seed,
            keep_completions=out_comp is not None, style=args.style, after_turns=args.after_turns)
    except ContextLengthError as e:
        fix = "lower --max-tokens or --after-turns" if args.after_turns else "lower --max-tokens"
        raise UserError(f"{e} ({fix})", param="--max-tokens") from None
    finally:
        if bar is not None:
            bar.close()
    bpb, results = report.get("bpb"), report.get("tasks")
    if results is not None:
        records = completion_records(results)
        results.pop("problems", None)
        report["tasks"] = results
        report["source"] = {"problems": args.problems} if args.problems else \
            {"task": args.task, "split": args.split, "difficulty": args.difficulty, "seed": args.seed}
    else:
        results, records = None, []
    text = results_markdown(results, bpb)
    print(text, end="")
    if out_md is not None:
        atomic_write_text(out_md, text)
        print(f"wrote {out_md}")
    if out_json is not None:
        atomic_write_text(out_json, to_json(report))
        print(f"wrote {out_json}")
    if out_comp is not None:
        atomic_write_text(out_comp, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"wrote {len(records):,} completions to {out_comp}")


def register(sub) -> None:
    p = sub.add_parser("eval", help="bits per byte and task accuracy (pass@k, maj@k) of a checkpoint",
                       description=cmd_eval.__doc__)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint directory, or a training run (its latest checkpoint)")
    g = p.add_argument_group("bits per byte")
    g.add_argument("--data", metavar="DIR", help="token shards from `nanoseek data prepare`: bits per byte on "
                                                 "their validation split")
    g.add_argument("--seq-len", type=positive_int, help="tokens per window (default: the model's context, at most "
                                                        "512; use the training run's to compare with its log)")
    g.add_argument("--eval-batch-size", type=positive_int, default=8, help="windows per batch (default 8)")
    g.add_argument("--eval-batches", type=positive_int, default=20, help="batches read at most (default 20)")
    g = p.add_argument_group("task accuracy")
    g.add_argument("--task", help="built-in task(s), comma-separated, or all (`nanoseek tasks list`)")
    g.add_argument("--problems", metavar="FILE", help="problems JSONL: generated, or your own "
                                                      "{\"prompt\", \"answer\", [\"checker\"]} lines")
    g.add_argument("--checker", default="exact",
                   help="for your own problems without one: exact, numeric, choice, or JSON such as "
                        "'{\"name\": \"numeric\", \"tolerance\": 0.01}' (default exact)")
    g.add_argument("--split", default="test", choices=["train", "val", "test"], help="--task: split (default test)")
    g.add_argument("--difficulty", default="1", help="--task: a level (2), a range (1-3) or a list (1,2,4) "
                                                     "(default 1)")
    g.add_argument("--n", type=positive_int, help="problems per task (default 200; with --problems: the first N)")
    g.add_argument("--samples", type=positive_int, default=1, help="answers sampled per problem (default 1)")
    g.add_argument("--k", type=k_values, default=[1], help="k values for pass@k and maj@k, e.g. 1,4,8 (each at most "
                                                      "--samples; default 1)")
    g.add_argument("--temperature", type=float, help="default 0 (greedy) for one sample, 1.0 for several")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    g.add_argument("--style", default="chat", choices=["chat", "plain"],
                   help="chat: ask in the chat template (after SFT or RL; default); plain: the bare prompt line, "
                        "answer read from the 'Answer:' line (the tasks' pretraining text)")
    g.add_argument("--after-turns", type=nonneg_int, default=0, metavar="N",
                   help="ask each problem after N other problems of the set and their answers, as a user goes on "
                        "in one conversation (the chat page sends the whole conversation; default 0)")
    g.add_argument("--max-tokens", type=positive_int, default=256, help="new tokens per answer at most (default 256)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="problems (--task) and sampling seed (default 0)")
    g.add_argument("--batch-size", type=positive_int, default=32, help="requests the engine runs at once "
                                                                       "(default 32)")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", "-o", metavar="FILE.json", help="write the results as JSON")
    g.add_argument("--markdown", metavar="FILE.md", help="write the markdown table to a file too")
    g.add_argument("--completions", metavar="FILE.jsonl", help="write every sample (prompt, completion, extracted "
                                                               "answer, correct, format) as JSONL")
    add_device_args(p, dtype_default="float32")
    p.set_defaults(func=cmd_eval)
