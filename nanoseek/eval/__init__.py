"""Evaluation: task accuracy (pass@k, maj@k) over sampled answers, and validation bits per byte.

    evaluate_checkpoint(ckpt, problems, data=DIR) -> dict               load a checkpoint, then both below
    evaluate_tasks(engine, problems, samples=8, k=(1, 4, 8)) -> dict   sample through the engine, check, score
    validation_bpb(model, data_dir, seq_len=512) -> dict               pretraining's bits per byte on DATA/val
    results_markdown(results, bpb) -> str                              the results as a markdown table

The report card that gathers a whole run's figures is nanoseek.report.
"""

from nanoseek.eval.accuracy import completion_records, evaluate_tasks, results_markdown, sample_seed, score
from nanoseek.eval.bpb import validation_bpb
from nanoseek.eval.checkpoint import evaluate_checkpoint

__all__ = ["evaluate_checkpoint", "evaluate_tasks", "validation_bpb", "results_markdown", "completion_records", "sample_seed", "score"]
