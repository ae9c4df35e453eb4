"""The report card of a run folder: RUN/report.md with its plots, from what the stages left behind.

    from nanoseek.report import write_report
    write_report("run")      # -> Path("run/report.md"); measure=False skips loading the model

runfolder reads the folder (validating each file once, where it is read); card writes the sections; plots draws
the PNGs; balance turns logged expert loads into MaxVio; facts checks the one-digit facts in worked answers;
decode times the final model's decoding.
"""

from nanoseek.report.card import write_report

__all__ = ["write_report"]
