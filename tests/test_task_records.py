"""Problem records are checked, not trusted (issue 22: 5, 6 and the small things), through `nanoseek tasks check`,
which reads problems files as `rl`, `eval` and the speedrun do: a built-in task's record is recomputed from its
meta (an answer that disagrees, or meta of the wrong types, is refused naming the file and line), numbers past
float range are compared exactly, and bring-your-own answers must be finite."""

from __future__ import annotations

import json

import pytest

from nanoseek.cli import main as cli
from nanoseek.data import tasks


def _lines(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _check(tmp_path, problems: list[dict], completions: list[dict], *flags) -> int:
    return cli(["tasks", "check", "--problems", _lines(tmp_path / "p.jsonl", problems), "--completions",
                _lines(tmp_path / "c.jsonl", completions), "-o", str(tmp_path / "scored.jsonl"), *flags])


def _scored(tmp_path) -> list[bool]:
    return [json.loads(x)["correct"] for x in (tmp_path / "scored.jsonl").read_text().splitlines()]


def _record(task: str, answer: str, **meta) -> dict:
    return {"format_version": 1, "task": task, "prompt": f"a {task} problem", "answer": answer, "meta": meta}


UNITS = dict(steps=[2], amount=2, extra=0, reverse=False)  # 2 hours in minutes: 120
WORD = dict(start=12, events=[["+", 5], ["-", 3], ["box", 2, 3]])  # 12 + 5 - 3 + 2*3 = 20
# (record, what the message says): answers that disagree with their meta, and meta of the wrong types
BAD = [
    (_record("arithmetic", "3", terms=[1, 1], ops=["+"]), "answer '3' disagrees with its \"meta\", which gives '2'"),
    (_record("arithmetic", "10", terms=[2, 3, 4], ops=["+", "*"]), "which gives '14'"),
    (_record("digit_sum", "7", number=123), "which gives '6'"),
    (_record("sort", "3, 1, 2", values=[3, 1, 2], descending=False), "which gives '1, 2, 3'"),
    (_record("units", "121", **UNITS), "which gives '120'"),
    (_record("word_problem", "14", **WORD), "which gives '20'"),
    (_record("countdown", "25+7*3", numbers=[3, 7], target=46), "\"meta\" does not fit its answer '25+7*3'"),
    (_record("arithmetic", "2", terms=["1", "1"], ops=["+"]), 'malformed "terms"'),
    (_record("arithmetic", "2", terms=[1, 1], ops=["+", "+"]), 'has 2 "terms" but 2 "ops"'),
    (_record("arithmetic", "2", terms=[1, True], ops=["+"]), 'malformed "terms"'),
    (_record("digit_sum", "5", number=23.0), 'malformed "number"'),
    (_record("digit_sum", "5", number="23"), 'malformed "number"'),
    (_record("sort", "1, 3", values=[1, 3], descending="no"), 'malformed "descending"'),
    (_record("sort", "1, 3", values=[1.0, 3]), 'malformed "values"'),
    (_record("units", "120", **{**UNITS, "amount": "2"}), 'malformed "amount"'),
    (_record("units", "120", steps=[2], amount=2, reverse=False), 'has no "extra"'),
    (_record("word_problem", "20", **{**WORD, "events": [["+", "5"]]}), 'malformed "events"'),
    (_record("countdown", "25+7*3", numbers=[3, 7, 25], target="46"), 'malformed "target"'),
    (_record("arithmetic", "2", terms=[1, 1], ops=["+"], key=7), 'malformed "key"'),
    (_record("arithmetic", "2", terms=[1, 1], ops=["+"], difficulty="easy"), 'malformed "difficulty"'),
]


@pytest.mark.parametrize("record, says", BAD, ids=[f"{r['task']}-{i}" for i, (r, _) in enumerate(BAD)])
def test_a_builtin_record_that_its_meta_does_not_give_is_refused(tmp_path, capsys, record, says):
    good = tasks.problem_record(tasks.generate(record["task"], "train", 1, 1)[0])
    assert _check(tmp_path, [good, record], [{"prompt": good["prompt"], "text": good["answer"]}]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nanoseek tasks: error: --problems {tmp_path / 'p.jsonl'}:2: ") and says in err, err
    assert len(err.splitlines()) == 1


def test_the_issues_record_is_refused_and_sound_records_score_as_their_tasks_do(tmp_path, capsys):
    """The report's record claimed 3 for 1+1 and then scored the right answer wrong; generated records of every
    task, level and wording load, and their answers score right (unknown meta keys are ignored)."""
    lie = {"task": "arithmetic", "prompt": "What is 1+1?", "answer": "3", "meta": {"terms": [1, 1], "ops": ["+"]}}
    assert _check(tmp_path, [lie], [{"prompt": "What is 1+1?", "text": "<think>1+1=2</think>2"}]) == 2
    assert "disagrees with its \"meta\", which gives '2'" in capsys.readouterr().err
    records = []
    for name in tasks.generated_tasks():
        levels = list(range(1, tasks.get_task(name).max_difficulty + 1))
        for wording in ("canonical", "train", "heldout"):
            records += [tasks.problem_record(p) for p in tasks.generate(name, "train", 12, levels, seed=5,
                                                                         unique=False, wording=wording)]
    records[0]["meta"]["from_a_newer_nanoseek"] = {"any": "thing"}
    completions = [{"prompt": r["prompt"], "text": f"<think>x</think>{r['answer']}"} for r in records]
    assert _check(tmp_path, records, completions, "--k", "1") == 0
    assert all(_scored(tmp_path))


# ---- numbers past float range (22.6) ---------------------------------------------------------------------------
def test_numbers_past_float_range_are_compared_exactly(tmp_path, capsys):
    big = "9" * 401
    problems = [{"prompt": "big", "answer": big}, {"prompt": "five", "answer": "5"},
                {"prompt": "tiny", "answer": "1/" + "1" + "0" * 400}]
    completions = [{"prompt": "big", "text": f"<think></think>{big}"},            # right, exactly
                   {"prompt": "big", "text": f"<think></think>{big[:-1]}8"},      # within the relative tolerance
                   {"prompt": "big", "text": f"<think></think>-{big}"},           # wrong
                   {"prompt": "big", "text": "<think></think>5"},                  # wrong
                   {"prompt": "five", "text": f"<think></think>{big}"},           # wrong, not an overflow
                   {"prompt": "five", "text": f"<think></think>{big}/{big}5"},    # about 0.1: wrong
                   {"prompt": "tiny", "text": "<think></think>0"},                 # within 1e-6 of 1e-400: right
                   {"prompt": "tiny", "text": "<think></think>1"}]                 # wrong
    assert _check(tmp_path, problems, completions, "--checker", "numeric") == 0, capsys.readouterr().err
    assert _scored(tmp_path) == [True, True, False, False, False, False, True, False]


# ---- small things ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("record, says", [
    ({"format_version": "1", "prompt": "q", "answer": "1"}, "format_version must be a whole number such as 1, got '1'"),
    ({"format_version": 1.0, "prompt": "q", "answer": "1"}, "format_version must be a whole number"),
    ({"format_version": None, "prompt": "q", "answer": "1"}, "format_version must be a whole number"),
    ({"format_version": 2, "prompt": "q", "answer": "1"}, "format_version 2 is newer"),
    ({"prompt": "q", "answer": float("nan")}, '"answer" must be a finite number, got nan'),
    ({"prompt": "q", "answer": float("inf"), "checker": "numeric"}, '"answer" must be a finite number, got inf'),
    ({"prompt": "q", "answer": float("-inf")}, '"answer" must be a finite number, got -inf'),
])
def test_versions_that_are_not_whole_numbers_and_answers_that_are_not_finite(tmp_path, capsys, record, says):
    assert _check(tmp_path, [record], [{"prompt": "q", "text": "nan"}]) == 2
    err = capsys.readouterr().err
    assert f"p.jsonl:1: {says}" in err, err
    assert ("newer" in err) == ("newer" in says), err
