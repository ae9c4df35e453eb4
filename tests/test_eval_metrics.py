"""pass@k, maj@k, accuracy aggregation and result tables, against hand-computed values."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import pytest

from nanoseek.eval.metrics import (Sample, aggregate, maj_at_k, majority_vote, markdown_table, pass_at_k,
                                   problem_metrics, summarize, to_json)


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 0.4),                     # c/n
    (5, 2, 2, 0.7),                     # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 5, 1 - 21 / 252),           # 1 - C(7,5)/C(10,5)
    (4, 1, 4, 1.0), (4, 3, 2, 1.0),     # n - c < k: every k-subset has a right one
    (8, 0, 8, 0.0), (1, 0, 1, 0.0), (1, 1, 1, 1.0),
    (16, 4, 3, 1 - 220 / 560),          # 1 - C(12,3)/C(16,3)
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_mean_over_all_k_subsets():
    for n, c, k in [(6, 2, 3), (7, 3, 2), (5, 1, 5), (6, 0, 2)]:
        outcomes = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(outcomes, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets), abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    n, c, k = 2000, 37, 500  # C(2000, 500) ~ 1e486 does not fit a float
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4, rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_majority_vote_and_its_ties():
    assert majority_vote(["3", "4", "3"]) == ("3", 0)
    assert majority_vote(["4", "3", "3", "4"]) == ("4", 0)          # tie: first seen wins
    assert majority_vote([None, "3", "4", "4", "3"]) == ("3", 1)
    assert majority_vote([None, None, "7"]) == ("7", 2)             # no answer does not vote
    assert majority_vote([None, None]) == (None, None) and majority_vote([]) == (None, None)


def test_maj_at_k_uses_the_first_k_samples():
    s = [Sample(False, "5"), Sample(True, "4"), Sample(True, "4"), Sample(False, "5"), Sample(False, "5")]
    # k=2 and k=4 tie between "5" and "4": "5" came first
    assert [maj_at_k(s, k) for k in range(1, 6)] == [False, False, True, False, False]
    assert maj_at_k([Sample(False, None), Sample(True, "4")], 2) is True
    assert maj_at_k([Sample(False, None)], 1) is False
    with pytest.raises(ValueError, match="maj@k needs"):
        maj_at_k(s, 6)


def test_problem_metrics_and_summary():
    a = [Sample(True, "1"), Sample(False, "2"), Sample(False, "2"), Sample(True, "1")]  # 2 of 4, tie -> "1"
    b = [Sample(False, "9"), Sample(False, None), Sample(False, "8"), Sample(False, "8")]  # 0 of 4
    c = [Sample(True, "3"), Sample(True, "3"), Sample(True, "3"), Sample(False, "0")]  # 3 of 4
    assert problem_metrics(a, (1, 2, 4, 8)) == pytest.approx(
        {"accuracy": 0.5, "pass@1": 0.5, "maj@1": 1.0, "pass@2": 5 / 6, "maj@2": 1.0, "pass@4": 1.0, "maj@4": 1.0})
    got = summarize([a, b, c], ks=(4, 1, 2))
    assert list(got) == ["problems", "samples", "accuracy", "accuracy_se", "pass@1", "maj@1", "pass@2", "maj@2",
                         "pass@4", "maj@4"]
    assert got["problems"] == 3 and got["samples"] == 4
    assert got["accuracy"] == pytest.approx((0.5 + 0 + 0.75) / 3) == got["pass@1"]
    # standard error of the mean over problems: sample standard deviation of per-problem accuracy / sqrt(3)
    mean = (0.5 + 0 + 0.75) / 3
    sd = (((0.5 - mean) ** 2 + mean ** 2 + (0.75 - mean) ** 2) / 2) ** 0.5
    assert got["accuracy_se"] == pytest.approx(sd / 3 ** 0.5)
    # greedy answers (one sample, right or wrong): the binomial sqrt(p (1 - p) / n), up to n / (n - 1)
    flat = summarize([[Sample(i < 300)] for i in range(1000)])
    assert flat["accuracy_se"] == pytest.approx((0.3 * 0.7 / 999) ** 0.5)
    assert got["pass@2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert got["pass@4"] == pytest.approx(2 / 3)
    assert got["maj@1"] == pytest.approx(2 / 3) and got["maj@4"] == pytest.approx(2 / 3)
    # k beyond the smallest sample count is left out rather than guessed
    assert "pass@4" not in summarize([a, c[:2]], ks=(1, 4)) and summarize([a, c[:2]], ks=(1, 4))["samples"] == 2


def test_aggregate_weighs_problems_equally():
    assert aggregate([{"accuracy": 1.0, "pass@8": 1.0}, {"accuracy": 0.0}, {"accuracy": 0.5}]) == \
        {"problems": 3, "accuracy": 0.5, "pass@8": 1.0}
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        problem_metrics([])


def test_markdown_table():
    rows = [{"task": "countdown", "difficulty": 2, "problems": 1200, "accuracy": 0.4567, "pass@8": 1.0,
             "loss": 0.123456},
            {"task": "sort | lists", "difficulty": None, "problems": 3, "accuracy": 0.0, "pass@8": 0.25}]
    assert markdown_table(rows) == (
        "| task | difficulty | problems | accuracy | pass@8 | loss |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| countdown | 2 | 1,200 | 45.7% | 100.0% | 0.1235 |\n"
        "| sort \\| lists | - | 3 | 0.0% | 25.0% | - |\n")
    assert markdown_table(rows, ["task", "pass@8"]).splitlines()[2] == "| countdown | 100.0% |"
    assert markdown_table([]) == ""


def test_to_json_keeps_raw_numbers():
    assert json.loads(to_json({"rows": [{"task": "x", "accuracy": 0.4567}]})) == {"rows": [{"task": "x", "accuracy": 0.4567}]}
