"""Evaluation: task accuracy (pass@k, maj@k) over sampled answers, and the tables that report it."""
