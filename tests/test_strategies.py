"""Solution strategies: direct answers, worked solutions, checks that catch a slip and redo the step; the
mix written to SFT sets and corpora; reading which strategy a completion followed."""

from __future__ import annotations

import json
import re

import pytest

from nanoseek.cli import main as cli
from nanoseek.data import tasks
from nanoseek.data.tasks import strategies
from nanoseek.errors import DataError
from nanoseek.train.rewards import split_completion

from cli_helpers import cli_error

NAMES = ("arithmetic", "digit_sum", "sort", "word_problem", "units", "countdown")


def test_direct_answers_are_one_line_that_ends_in_the_answer():
    for name in NAMES:
        for p in tasks.generate(name, "train", 20, "1-3", seed=4):
            sol = strategies.solution_in(p, "direct")
            assert len(sol.reasoning.splitlines()) == 1 and strategies.strategy_of(sol.reasoning) == "direct"
            assert tasks.check_answer(p, sol.answer)
            if name == "countdown":  # the expression and the target it reaches
                assert sol.reasoning == f"{sol.answer}={p.meta['target']}"
            else:
                assert sol.reasoning.endswith(sol.answer)
    p = tasks.generate("arithmetic", "train", 1, 3, seed=5)[0]  # What is 86 * 8?
    assert strategies.solution_in(p, "direct").reasoning == "86*8=688"


def _step(line):
    m = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", line)
    return m and (int(m[1]), m[2], int(m[3]), int(m[4]))


def test_checked_solutions_check_by_the_inverse_and_redo_a_caught_slip():
    checked = slipped = 0
    for name in NAMES:
        for p in tasks.generate(name, "train", 60, "1-3", seed=7):
            sol = strategies.solution_in(p, "checked")
            worked = tasks.worked_solution(p)
            assert sol.answer == worked.answer and tasks.check_answer(p, sol.answer)
            if strategies.strategy_of(sol.reasoning) != "checked":  # no check for this last step: as worked
                assert sol == worked
                continue
            checked += 1
            lines = sol.reasoning.splitlines()
            verdicts = [i for i, line in enumerate(lines) if line.endswith((", right", ", redo"))]
            assert lines[verdicts[-1]].endswith(", right")  # the last check passes
            # each check's inverse step really computes what its verdict reads
            for i in verdicts:
                a, op, b, r = _step(lines[i - 1])
                assert r == (a - b if op == "-" else a + b if op == "+" else a // b) and lines[i].startswith(f"{r}, ")
            if len(verdicts) == 2:  # a slip: the wrong result, its failed check, the redone step, its check
                slipped += 1
                assert lines[verdicts[0]].endswith(", redo") and "not" in lines[verdicts[0]]
                assert lines[verdicts[0] + 1] == worked.reasoning.splitlines()[-1]
            assert lines[:len(worked.reasoning.splitlines()) - 1] == worked.reasoning.splitlines()[:-1]
    assert checked > 100 and 0.15 < slipped / checked < 0.45  # CHECK_SLIP is 0.3


def test_a_mix_is_drawn_per_problem_and_counted_as_written():
    problems = [p for name in NAMES for p in tasks.generate(name, "train", 200, "1-3", seed=1)]
    ways = strategies.assign(problems, "direct=0.5,worked=0.3,checked=0.2", seed=0)
    assert ways == strategies.assign(problems, {"direct": 5, "worked": 3, "checked": 2}, seed=0)  # normalized
    got = strategies.shares(ways)
    assert got["direct"] == pytest.approx(0.5, abs=0.05)
    # checked falls back to worked where there is no check (sort, most countdowns): counted as worked
    assert 0.05 < got["checked"] < 0.2 and got["worked"] > 0.3
    for p, how in zip(problems, ways):
        assert strategies.strategy_of(strategies.solution_in(p, how).reasoning) == how
    assert strategies.describe({"direct": 0.8, "worked": 0.2, "checked": 0.0, "none": 0.0}) == "80% direct, 20% worked"


@pytest.mark.parametrize("spec, msg", [("fast=1", "unknown strategy 'fast'"), ("direct=x", "must be a number"),
                                       ("direct=0", "gives no strategy a share"), ("direct=-1", "must be >= 0"),
                                       ("direct=inf", "not a finite number"),
                                       ("direct=0.5,worked,direct=0.5", "named twice")])
def test_bad_mixes_name_the_problem(spec, msg):
    with pytest.raises(DataError, match=msg):
        strategies.parse_mix(spec)


def test_strategy_of_a_completion():
    read = lambda text: strategies.strategy_of(split_completion(text)[0])  # noqa: E731
    assert read("<think>47+385=432</think>432<|end|>") == "direct"
    assert read("<think>7+5=12, write 2, carry 1\n4+8+1=13\n47+385=432</think>432") == "worked"
    assert read("<think>47+385=432\ncheck:\n432-385=47\n47, right</think>432") == "checked"
    assert read("432") is None and read("<think>\n</think>432") is None


def test_tasks_generate_writes_the_mix_and_says_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "sft.jsonl"
    assert cli(["tasks", "generate", "--task", "arithmetic,digit_sum", "--difficulty", "2-3", "--n", "200",
                "--format", "sft", "--strategies", "direct=0.75,worked=0.25", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ways = [strategies.strategy_of(r["messages"][-1]["reasoning"]) for r in records]
    share = ways.count("direct") / len(ways)
    assert 0.65 < share < 0.85 and set(ways) == {"direct", "worked"}
    assert f"solutions {share:.0%} direct, {1 - share:.0%} worked" in said
    text = tmp_path / "corpus.txt"
    assert cli(["tasks", "generate", "--task", "arithmetic", "--difficulty", "2", "--n", "50", "--format", "text",
                "--strategies", "checked", "--out", str(text)]) == 0
    assert "check:" in text.read_text() and "100% checked" in capsys.readouterr().out
    cli_error(capsys, ["tasks", "generate", "--task", "arithmetic", "--n", "5", "--format", "sft", "--strategies",
                       "shortcut=1", "--out", str(tmp_path / "x.jsonl")], "--strategies")


def test_held_out_problems_are_checked_against_everything_trained_on():
    train = tasks.generate("arithmetic", "train", 50, 2)
    test = tasks.generate("arithmetic", "test", 50, 2)
    tasks.check_disjoint({"SFT": train}, {"test": test})
    with pytest.raises(DataError, match="also in the SFT data"):
        tasks.check_disjoint({"SFT": train}, {"test": test + train[3:4]})
