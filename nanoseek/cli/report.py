"""`nanoseek report RUN`: the run's report card (RUN/report.md and RUN/plots/*.png)."""

from __future__ import annotations

import argparse
from pathlib import Path


HELP = """\
Writes RUN/report.md and its plots in RUN/plots/ from what a run folder holds: the config and parameter
counts, the machine, each stage's time, tokens, FLOPs, MFU and cost (also on the GPUs of `nanoseek cost`'s
table), validation bits per byte, task accuracy after each stage, the final model's decode speed and MTP
acceptance rate (measured now: about 20 s on a CPU; --no-measure skips it), loss, reward, length and
expert-load plots, and the final model's answers to held-out problems, marked right or wrong.

RUN is the folder `nanoseek speedrun` writes, any part of it, or one training run's --out directory
(`nanoseek pretrain --out RUN`). A missing piece is named in the report with the command that makes it.
"""


def cmd_report(args) -> None:
    from nanoseek.report import write_report  # matplotlib, ~0.3 s: not at every other command's start

    path = write_report(args.run, measure=not args.no_measure, announce=print)
    plots = sorted((Path(args.run) / "plots").glob("*.png"))
    print(f"wrote {path}" + (f" and {len(plots)} plot(s) in {path.parent / 'plots'}" if plots else ""))


def register(sub) -> None:
    p = sub.add_parser("report", help="the report card of a run: report.md with costs, metrics, plots, answers",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="a run folder (nanoseek speedrun) or a training run's --out directory")
    p.add_argument("--no-measure", action="store_true",
                   help="do not load the final model to measure its decode speed and MTP acceptance rate")
    p.set_defaults(func=cmd_report)
