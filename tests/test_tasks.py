"""Verifiable tasks: generation, checkers (with adversarial Countdown answers), worked solutions, disjoint
splits, determinism, bring-your-own files, the writers, and `nanoseek tasks` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanoseek import cli
from nanoseek.data import tasks
from nanoseek.data.tasks.arithmetic import work_add, work_mul, work_sub
from nanoseek.data.tasks.countdown import MAX_DEPTH, ExpressionError, evaluate, parse, render
from nanoseek.errors import DataError
from nanoseek.tokenizer import Tokenizer

GENERATED = tasks.generated_tasks()


def countdown(numbers, target) -> tasks.Problem:
    return tasks.Problem("countdown", "Make ...", "x", {"numbers": numbers, "target": target})


# ---- every task, every level -------------------------------------------------------------------------------
def test_the_suite_has_the_promised_tasks():
    assert set(GENERATED) == {"arithmetic", "countdown", "sort", "digit_sum", "units", "word_problem"}
    assert "custom" in tasks.TASKS and "custom" not in GENERATED


@pytest.mark.parametrize("name", GENERATED)
def test_reference_answers_and_worked_solutions_pass_their_checker(name):
    t = tasks.get_task(name)
    for level in range(1, t.max_difficulty + 1):
        for p in tasks.generate(name, "train", 40, level, seed=7, unique=False):
            assert p.task == name and p.difficulty == level and p.split == "train"
            assert tasks.check_answer(p, p.answer), (p.prompt, p.answer)
            sol = tasks.worked_solution(p)
            assert sol.reasoning.strip() and "\n\n" not in sol.reasoning
            assert tasks.check_answer(p, sol.answer), (p.prompt, sol)
            assert not tasks.check_answer(p, None)
            # short enough for a 256-token context: well under 600 characters prompt + steps + answer
            assert len(p.prompt) + len(sol.reasoning) + len(sol.answer) < 600
            assert json.loads(json.dumps(p.to_dict())) == p.to_dict()


@pytest.mark.parametrize("name", GENERATED)
def test_wrong_answers_fail(name):
    for p in tasks.generate(name, "val", 20, 2, seed=1):
        assert not tasks.check_answer(p, "")
        assert not tasks.check_answer(p, "banana")
        if name in ("arithmetic", "digit_sum", "units", "word_problem"):
            assert not tasks.check_answer(p, str(int(p.answer) + 1))
            assert not tasks.check_answer(p, f"{p.answer} or {int(p.answer) + 1}")
        if name == "sort":
            assert not tasks.check_answer(p, ", ".join(reversed(p.answer.split(", "))))


# ---- splits and determinism ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GENERATED)
def test_splits_never_share_a_problem(name):
    keys = {}
    for split in tasks.SPLITS:
        got = set()
        for seed, n, level in [(0, 30, "1-2"), (1, 10, 3), (123, 25, "1,3")]:
            for p in tasks.generate(name, split, n, level, seed=seed, unique=False):
                assert tasks.split_of(name, p.key) == split
                got.add(p.key)
        keys[split] = got
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


def test_split_follows_the_problem_not_its_phrasing():
    # 3 + 5 and 5 + 3 are one problem; the word problem's names and objects are phrasing
    ps = tasks.generate("arithmetic", "train", 400, 1, seed=0, unique=False)
    by_prompt = {p.prompt: p for p in ps}
    swapped = [(p, by_prompt[f"What is {p.meta['terms'][1]} + {p.meta['terms'][0]}?"]) for p in ps
               if p.meta["ops"] == ["+"] and p.meta["terms"][0] != p.meta["terms"][1]
               and f"What is {p.meta['terms'][1]} + {p.meta['terms'][0]}?" in by_prompt]
    assert swapped and all(a.key == b.key for a, b in swapped)
    words = tasks.generate("word_problem", "train", 300, 1, seed=0, unique=False)
    same_key = {}
    for p in words:
        same_key.setdefault(p.key, set()).add(p.prompt)
    assert any(len(prompts) > 1 for prompts in same_key.values())  # other names, same chain, same key
    for p in words:
        assert p.key == f"{p.meta['start']} " + "".join(map(str, p.meta["events"][0]))


# ---- wordings ---------------------------------------------------------------------------------------------
WORDED = [name for name in GENERATED if tasks.get_task(name).frames]


def test_the_speedrun_tasks_have_dozens_of_wordings_some_held_out():
    assert set(WORDED) >= {"arithmetic", "digit_sum", "sort", "units", "word_problem"}
    for name in WORDED:
        frames = tasks.get_task(name).frames
        held = [f for f in frames if f.held_out]
        assert len(frames) - len(held) >= 24 and len(held) >= 7, name
        texts = [f.text for f in frames]
        assert len(set(texts)) == len(texts), name
        # a held-out frame stays held out after the surface changes too (lower case, no final punctuation)
        train_forms = {f.text.lower().rstrip("?.!") for f in frames if not f.held_out}
        assert not any(f.text.lower().rstrip("?.!") in train_forms for f in held), name


@pytest.mark.parametrize("name", WORDED)
def test_wordings_change_the_question_never_the_problem(name):
    canonical = tasks.generate(name, "test", 60, "1-3", seed=3)
    trained = tasks.generate(name, "test", 60, "1-3", seed=3, wording="train")
    held = tasks.generate(name, "test", 60, "1-3", seed=3, wording="heldout")
    frames = tasks.get_task(name).frames
    for c, t, h in zip(canonical, trained, held):
        # the same problem (so the same split, answer and worked solution), asked another way
        assert c.key == t.key == h.key and c.answer == t.answer == h.answer
        assert tasks.worked_solution(c) == tasks.worked_solution(t) == tasks.worked_solution(h)
        assert "wording" not in c.meta
        assert not frames[t.meta["wording"]].held_out and frames[h.meta["wording"]].held_out
        assert tasks.check_answer(h, h.answer) and tasks.problem_from_record(tasks.problem_record(h)) == h
    assert len({p.prompt for p in trained}) == 60 and len({p.meta["wording"] for p in trained}) > 10


@pytest.mark.parametrize("name", WORDED)
def test_every_frame_is_asked_somewhere_in_the_speedrun_levels(name):
    """A frame with a tag (e.g. "Subtract {b} from {a}.", two-term differences only) must fit some problem
    at levels 1-3, or its wording would never be trained or tested."""
    used = set()
    for wording in ("train", "heldout"):
        used |= {p.meta["wording"] for p in tasks.generate(name, "train", 3000, "1-3", seed=0, unique=False,
                                                             wording=wording)}
    assert used == set(range(len(tasks.get_task(name).frames)))


def test_worded_numbers_are_the_problems_numbers():
    """Whatever the wording, the operands appear in the prompt as digits (the model reads them from there)."""
    for p in tasks.generate("arithmetic", "train", 300, "1-3", seed=1, wording="heldout"):
        assert all(str(t) in p.prompt for t in p.meta["terms"]), p.prompt
    for p in tasks.generate("sort", "train", 300, "1-3", seed=1, wording="train"):
        assert all(str(v) in p.prompt for v in p.meta["values"]), p.prompt
    for p in tasks.generate("units", "train", 300, "1-3", seed=1, wording="heldout"):
        assert p.meta["key"].split(" ")[0] in p.prompt, p.prompt  # the amount given (the key starts with it)


def test_unknown_wording_is_refused():
    with pytest.raises(DataError, match="unknown wording 'fancy'"):
        tasks.generate("sort", "train", 3, 1, wording="fancy")


def test_generation_is_deterministic_and_prefix_stable():
    a = tasks.generate("countdown", "train", 30, "1-3", seed=5)
    assert a == tasks.generate("countdown", "train", 30, "1-3", seed=5)
    assert a[:10] == tasks.generate("countdown", "train", 10, "1-3", seed=5)
    assert a != tasks.generate("countdown", "train", 30, "1-3", seed=6)
    assert len({p.key for p in a}) == 30  # unique by default
    assert {p.difficulty for p in a} == {1, 2, 3}


def test_a_used_up_split_says_so_unless_repeats_are_allowed():
    with pytest.raises(DataError, match=r"only \d+ distinct arithmetic problems at difficulty 1 exist in the test"):
        tasks.generate("arithmetic", "test", 500, 1)
    assert len(tasks.generate("arithmetic", "test", 500, 1, unique=False)) == 500


@pytest.mark.parametrize("args, match", [
    (("nope", "train", 3, 1), "unknown task 'nope'"),
    (("custom", "train", 3, 1), "read from files"),
    (("sort", "dev", 3, 1), "unknown split 'dev'"),
    (("sort", "train", 0, 1), "at least 1"),
    (("sort", "train", 3, 6), "levels 1-5, not 6"),
    (("sort", "train", 3, "0-2"), "not 0"),
    (("sort", "train", 3, "easy"), "give a level"),
])
def test_bad_generation_arguments(args, match):
    with pytest.raises(DataError, match=match):
        tasks.generate(*args)


def test_parse_difficulty():
    assert tasks.parse_difficulty("2") == (2,)
    assert tasks.parse_difficulty("1-3") == (1, 2, 3)
    assert tasks.parse_difficulty("1,3, 4") == (1, 3, 4)
    assert tasks.parse_difficulty([2, 2, 1]) == (2, 1)


# ---- worked solutions, by hand ------------------------------------------------------------------------------
def test_column_addition_subtraction_and_multiplication():
    assert work_add(47, 385) == ["7+5=12, write 2, carry 1", "4+8+1=13, write 3, carry 1", "3+1=4, write 4",
                                 "47+385=432"]
    assert work_add(95, 7) == ["5+7=12, write 2, carry 1", "9+1=10, write 10", "95+7=102"]
    assert work_add(120, 4) == ["0+4=4, write 4", "write 2", "write 1", "120+4=124"]
    assert work_sub(541, 372) == ["1<2, borrow: 11-2=9, write 9", "4-1<7, borrow: 13-7=6, write 6",
                                  "5-1-3=1, write 1", "541-372=169"]
    assert work_sub(100, 1) == ["0<1, borrow: 10-1=9, write 9", "0-1<0, borrow: 9-0=9, write 9",
                                "1-1=0, write 0", "100-1=99"]
    assert work_mul(57, 9) == ["7*9=63, write 3, carry 6", "5*9+6=51, write 51", "57*9=513"]
    assert work_mul(47, 36) == ["47*6=282", "47*30=1410", "282+1410=1692", "47*36=1692"]


def test_three_term_expressions_follow_precedence():
    p = tasks.Problem("arithmetic", "What is 45 - 12 * 3?", "9", {"terms": [45, 12, 3], "ops": ["-", "*"]})
    sol = tasks.worked_solution(p)
    assert sol.answer == "9"
    lines = sol.reasoning.split("\n")
    assert lines[0] == "45-12*3"  # the expression as symbols first, whatever the wording
    assert lines.index("12*3=36") < lines.index("45-36=9")


def test_countdown_worked_solution_is_a_search_that_ends_in_a_hit():
    p = countdown([3, 7, 25], 46)
    sol = tasks.worked_solution(p)
    lines = sol.reasoning.split("\n")
    assert lines[-2].startswith("try ") and lines[-2].endswith(", hit")
    assert all(line.endswith(", miss") for line in lines[:-2])
    assert lines[-1] == f"{sol.answer}=46"
    assert evaluate(sol.answer, [3, 7, 25], 46) == 46


def test_other_worked_solutions():
    p = tasks.Problem("digit_sum", "", "15", {"number": 4821})
    assert tasks.worked_solution(p).reasoning == "4+8=12\n12+2=14\n14+1=15"
    p = tasks.Problem("sort", "", "42, 19, 7", {"values": [42, 7, 19], "descending": True})
    # the list and the order restated in one form first, whatever the wording
    assert tasks.worked_solution(p).reasoning == ("largest first: 42, 7, 19\n42 is the largest, left 7, 19\n"
                                                   "19 is the largest, left 7\n7 is the last")
    # units: multiplying and dividing by a factor goes through its one-digit factors (column work each) and its
    # power of ten, so no step is a multi-digit product or quotient written at once
    p = tasks.Problem("units", "", "7200", {"steps": [2, 3], "amount": 2, "extra": 0, "reverse": False})
    assert tasks.worked_solution(p).reasoning == (
        "2 hours to seconds\n1 hour = 60 minutes\n2*60=2*6*10\n2*6=12\n12*10=120\n1 minute = 60 seconds\n"
        "120*60=120*6*10\n0*6=0, write 0\n2*6=12, write 2, carry 1\n1*6+1=7, write 7\n120*6=720\n720*10=7200")
    p = tasks.Problem("units", "", "3", {"steps": [2], "amount": 3, "extra": 0, "reverse": True})
    assert tasks.worked_solution(p).reasoning == (
        "180 minutes to hours\n60 minutes = 1 hour\n180/60=180/10/6\n180/10=18\n18/6=3, 3*6=18, 18-18=0\n18/6=3")
    p = tasks.Problem("units", "", "57", {"steps": [1], "amount": 57, "extra": 0, "reverse": True})
    assert tasks.worked_solution(p).reasoning == (  # short division: 1368 / 8, then / 3; each digit, product, rest
        "1368 hours to days\n24 hours = 1 day\n1368/24=1368/8/3\n13/8=1, 1*8=8, 13-8=5\n56/8=7, 7*8=56, 56-56=0\n"
        "8/8=1, 1*8=8, 8-8=0\n1368/8=171\n17/3=5, 5*3=15, 17-15=2\n21/3=7, 7*3=21, 21-21=0\n171/3=57")
    # word problems work each event in columns, as the arithmetic task does
    p = tasks.Problem("word_problem", "", "29", {"start": 12, "events": [["+", 5], ["box", 3, 4]]})
    assert tasks.worked_solution(p).reasoning == ("12+5+3*4\n2+5=7, write 7\nwrite 1\n12+5=17\n3*4=12\n"
                                                   "7+2=9, write 9\n1+1=2, write 2\n17+12=29")


# ---- checkers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, ok", [
    ("25+7*3", True), ("7*3+25", True), (" 25 + 3 * 7 ", True), ("(7*3)+25", True), ("25+7×3", True),
    ("25+7*3=46", True), ("25+7*3 = 46", True), ("((25+(7*3)))", True),
    ("25+7*3=47", False),          # claims another target
    ("25+7+7+7", False),           # 7 reused
    ("25+21", False),              # 21 not given
    ("25*2-4", False),             # numbers not given
    ("25+7*3+0", False),           # 0 not given
    ("46", False),                 # the target itself is not a given number
    ("25+7*3/0", False),           # division by zero
    ("(25-7)/3+40", False),        # 40 not given
    ("25/3*3+25", False),          # 25/3 is not whole (and 25 reused)
    ("-3+7+25", False),            # unary minus
    ("25+7**3", False),            # no powers
    ("2**999999", False),
    ("25+7*3)", False), ("(25+7*3", False), ("25 7 3", False), ("25+*7", False), ("", False), ("=46", False),
    ("07*3+25", False),            # leading zero
    ("__import__('os')", False), ("25+7*3 and 1", False), ("25.0+7*3", False), ("٢٥+7*3", False),
])
def test_countdown_checker(answer, ok):
    assert tasks.check_answer(countdown([3, 7, 25], 46), answer) is ok


def test_countdown_rules_in_detail():
    assert evaluate("8/4*3", [8, 4, 3]) == 6
    with pytest.raises(ExpressionError, match="8/3 is not a whole number"):
        evaluate("8/3*3", [8, 3, 3])
    with pytest.raises(ExpressionError, match="division by zero"):
        evaluate("8/(3-3)", [8, 3, 3])
    with pytest.raises(ExpressionError, match="used too often"):
        evaluate("3*3", [3, 7])
    assert evaluate("3*3", [3, 3, 7]) == 9  # a number given twice may be used twice
    assert evaluate("3-7", [3, 7]) == -4  # negatives are allowed
    assert tasks.check_answer(countdown([5, 5, 2], 50), "5*5*2")
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("(" * (MAX_DEPTH + 2) + "1" + ")" * (MAX_DEPTH + 2))
    with pytest.raises(ExpressionError, match="longer than"):
        parse("1+" * 150 + "1")
    assert render(parse("2+(49+(92+72))")) == "2+49+92+72"
    assert render(parse("8-(3-1)")) == "8-(3-1)" and render(parse("24/(2*3)")) == "24/(2*3)"
    assert render(parse("(1+2)*(3+4)")) == "(1+2)*(3+4)"


@pytest.mark.parametrize("task, meta, answer, good, bad", [
    ("arithmetic", {"terms": [617, 617], "ops": ["+"]}, "1234",
     ["1234", " 1234 ", "1234.", "1,234", "1234.0"], ["1235", "1234 1235", "12 34", "one thousand", "1234!", "$1234"]),
    ("sort", {"values": [19, 7, 42], "descending": False}, "7, 19, 42",
     ["7, 19, 42", "7 19 42", "[7, 19, 42]", "7,19,42", "7; 19; 42", "7, 19, 42."],
     ["42, 19, 7", "7, 19", "7, 19, 42, 42", "7, 19, 42,", "7,, 19, 42", "seven, 19, 42", "7, 19.5, 42"]),
])
def test_builtin_checkers(task, meta, answer, good, bad):
    p = tasks.Problem(task, "", answer, meta)
    assert all(tasks.check_answer(p, g) for g in good), [g for g in good if not tasks.check_answer(p, g)]
    assert not any(tasks.check_answer(p, b) for b in bad), [b for b in bad if tasks.check_answer(p, b)]


def test_named_checkers():
    exact, nocase = tasks.make_checker("exact"), tasks.make_checker({"name": "exact", "ignore_case": True})
    assert exact.check("  New   York ", "New York") and not exact.check("new york", "New York")
    assert nocase.check("new YORK", "New York") and not nocase.check("New Yorks", "New York")
    num = tasks.make_checker("numeric")
    for got in ["1,234.5", "1234.50", "$1,234.5", "1234.5 dollars", "2469/2", "The answer is 1234.5."]:
        assert num.check(got, "1234.5"), got
    for got in ["1234", "1234.5 or 1235", "12,34.5", "", "x"]:
        assert not num.check(got, "1234.5"), got
    assert num.check("0.75", "3/4") and num.check("-2", "-2.0") and not num.check("2", "-2")
    loose = tasks.make_checker({"name": "numeric", "tolerance": 0.01})
    assert loose.check("100.9", "100") and not loose.check("101.1", "100")
    choice = tasks.make_checker("choice")
    for got in ["B", "b", "(B)", "B.", "B)", "B) Paris", "(B) Paris", "B: Paris", " B "]:
        assert choice.check(got, "B"), got
    for got in ["C", "BC", "Paris", "", "(B", "(B)Paris", "answer B"]:
        assert not choice.check(got, "B"), got
    assert num.key("1,234") == num.key("1234.0") == "1234" and choice.key("(c)") == "C"


@pytest.mark.parametrize("spec, match", [
    ("fuzzy", "unknown checker 'fuzzy'"), ({"name": "numeric", "tol": 1}, "no option 'tol'"),
    ({"name": "numeric", "tolerance": -1}, "bad value"), ({"name": "exact", "ignore_case": "yes"}, "bad value"),
    (3, "a checker is a name"), ({"tolerance": 1}, "a checker is a name"),
])
def test_bad_checker_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        tasks.make_checker(spec)


# ---- bring your own, and the writers ------------------------------------------------------------------------
def write_lines(path: Path, lines) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_bring_your_own_problems(tmp_path):
    f = write_lines(tmp_path / "mine.jsonl", [
        {"prompt": "Natalia sold 48 clips in April and half as many in May. How many in total?", "answer": "72",
         "checker": "numeric", "reasoning": "48/2=24\n48+24=72"},
        {"prompt": "Capital of France?", "answer": "Paris"},
        "",
        {"prompt": "2+2? A) 3 B) 4", "answer": "B", "checker": "choice"},
        {"prompt": "pi?", "answer": 3.14159, "checker": {"name": "numeric", "tolerance": 0.001}},
    ])
    ps = tasks.read_problems(f, default_checker={"name": "exact", "ignore_case": True})
    assert [p.task for p in ps] == ["custom"] * 4
    assert tasks.check_answer(ps[0], "72 clips") and not tasks.check_answer(ps[0], "71")
    assert tasks.check_answer(ps[1], "paris") and not tasks.check_answer(ps[1], "Lyon")  # the default checker
    assert tasks.check_answer(ps[2], "(B)") and not tasks.check_answer(ps[2], "A")
    assert tasks.check_answer(ps[3], "3.1416")
    assert tasks.worked_solution(ps[0]).reasoning == "48/2=24\n48+24=72" and tasks.worked_solution(ps[1]) is None
    out = tmp_path / "again.jsonl"
    tasks.write_problems(ps, out)
    assert tasks.read_problems(out) == ps  # checkers travel with the problems


@pytest.mark.parametrize("line, match", [
    ("{not json", r"mine.jsonl:2: not valid JSON"),
    ('["a list"]', r"mine.jsonl:2: expected a JSON object"),
    ('{"answer": "1"}', r'mine.jsonl:2: "prompt" must be a non-empty string'),
    ('{"prompt": "q", "answer": ["1"]}', r'mine.jsonl:2: "answer" must be a string or a number'),
    ('{"prompt": "q", "answer": "many", "checker": "numeric"}', r"mine.jsonl:2: the answer 'many' is not a number"),
    ('{"prompt": "q", "answer": "Paris", "checker": "choice"}', r"mine.jsonl:2: .* not a choice letter"),
    ('{"prompt": "q", "answer": "1", "checker": "fuzzy"}', r"mine.jsonl:2: \"checker\": unknown checker 'fuzzy'"),
    ('{"prompt": "q", "answer": "1", "task": "chess"}', r"mine.jsonl:2: unknown task 'chess'"),
    ('{"prompt": "Make 46 ...", "answer": "25+7*3", "task": "countdown", "meta": {"numbers": [3, 7], "target": 46}}',
     r"mine.jsonl:2: this countdown problem's \"meta\" does not fit"),
    ('{"prompt": "q", "answer": "1", "format_version": 99}', r"mine.jsonl:2: format_version 99 is newer"),
])
def test_malformed_problem_files_name_file_and_line(tmp_path, line, match):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"prompt": "ok", "answer": "1"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=match):
        tasks.read_problems(f)


def test_missing_and_empty_problem_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        tasks.read_problems(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no problems"):
        tasks.read_problems(write_lines(tmp_path / "empty.jsonl", [""]))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = [tasks.render_text(p) for name in GENERATED for p in tasks.generate(name, "train", 60, "1-3", seed=2)]
    return Tokenizer.train(texts, 600)


def test_sft_records_render_through_the_chat_template(tmp_path, tok):
    ps = tasks.generate("countdown", "train", 5, 2, seed=0) + tasks.generate("sort", "train", 5, 1, seed=0)
    out = tmp_path / "sft.jsonl"
    assert tasks.write_sft(ps, out) == 10
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for p, rec in zip(ps, records):
        user, assistant = rec["messages"]
        sol = tasks.worked_solution(p)
        assert user == {"role": "user", "content": p.prompt}
        assert assistant == {"role": "assistant", "reasoning": sol.reasoning, "content": sol.answer}
        ids, mask = tok.render_chat(rec["messages"])
        text = tok.decode(ids)
        assert text == "<|bos|>" + tasks.render_text(p, "chat")
        first = mask.index(1)
        assert ids[first] == tok.think_id and tok.decode([i for i, m in zip(ids, mask) if m]) == \
            f"<think>{sol.reasoning}</think>{sol.answer}<|end|>"


def test_text_writer(tmp_path):
    ps = tasks.generate("digit_sum", "train", 5, 1, seed=0)
    assert tasks.render_text(ps[0]).split("\n")[0] == ps[0].prompt
    assert tasks.render_text(ps[0]).endswith(f"\nAnswer: {ps[0].answer}")
    assert tasks.write_text(ps, tmp_path / "a.jsonl", group=2) == 3
    docs = [json.loads(x)["text"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert docs[0] == tasks.render_text(ps[0]) + "\n" + tasks.render_text(ps[1])
    assert tasks.write_text(ps, tmp_path / "a.txt") == 5
    paragraphs = (tmp_path / "a.txt").read_text().strip().split("\n\n")
    assert paragraphs == [tasks.render_text(p) for p in ps]
    with pytest.raises(DataError, match="unknown text style"):
        tasks.render_text(ps[0], "html")


def test_problem_records_are_prompts_files_for_generate(tmp_path):
    ps = tasks.generate("units", "test", 4, "1-3", seed=0)
    tasks.write_problems(ps, tmp_path / "p.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(rec["format_version"] == 1 and isinstance(rec["prompt"], str) for rec in lines)
    assert tasks.read_problems(tmp_path / "p.jsonl") == ps


# ---- the command line ---------------------------------------------------------------------------------------
def test_cli_list_show_generate(tmp_path, capsys):
    assert cli.main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}:" in out for name in GENERATED) and "e.g. " in out
    assert cli.main(["tasks", "show", "--task", "countdown", "--difficulty", "2", "--n", "2"]) == 0
    assert capsys.readouterr().out.count("Answer: ") == 2
    f = tmp_path / "p.jsonl"
    assert cli.main(["tasks", "generate", "--task", "countdown,sort", "--split", "val", "--n", "7",
                     "--difficulty", "1-2", "--seed", "3", "--out", str(f)]) == 0
    assert "wrote 14 problems" in capsys.readouterr().out
    ps = tasks.read_problems(f)
    assert ps == tasks.generate("countdown", "val", 7, "1-2", seed=3) + tasks.generate("sort", "val", 7, "1-2", seed=3)
    assert cli.main(["tasks", "generate", "--task", "all", "--n", "3", "--format", "sft", "-o", str(tmp_path / "s.jsonl")]) == 0
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 3 * len(GENERATED)
    assert cli.main(["tasks", "generate", "--task", "units", "--n", "4", "--format", "text", "--group", "2",
                     "--style", "chat", "-o", str(tmp_path / "t.jsonl")]) == 0
    docs = [json.loads(x)["text"] for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(docs) == 2 and docs[0].startswith("<|user|>") and docs[0].count("<think>") == 2


def test_cli_check_scores_completions(tmp_path, capsys):
    ps = tasks.generate("arithmetic", "test", 3, 2, seed=0)
    tasks.write_problems(ps, tmp_path / "p.jsonl")
    recs = []
    for p in ps:
        sol = tasks.worked_solution(p)
        recs += [{"prompt": p.prompt, "text": f"<think>{sol.reasoning}</think>{sol.answer}<|end|>"},   # right
                 {"prompt": p.prompt, "completion": f"<think>hmm</think>{int(p.answer) + 1}"},         # wrong
                 {"prompt": p.prompt, "content": p.answer, "reasoning_content": "quick"}]              # right
    write_lines(tmp_path / "c.jsonl", recs)
    assert cli.main(["tasks", "check", "--problems", str(tmp_path / "p.jsonl"), "--completions",
                     str(tmp_path / "c.jsonl"), "--k", "1,2,3", "--json", str(tmp_path / "r.json"),
                     "-o", str(tmp_path / "scored.jsonl")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| task | problems | samples | accuracy | accuracy_se | pass@1 | maj@1 |")
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert row["problems"] == 3 and row["samples"] == 3
    assert row["accuracy"] == pytest.approx(2 / 3) and row["pass@2"] == 1.0 and row["maj@3"] == 1.0
    assert row["maj@2"] == 1.0  # a 1-1 tie goes to the first answer, the right one
    assert row["format"] == 1.0 and row["reward"] == pytest.approx(2 / 3 + 0.1)
    scored = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [s["correct"] for s in scored] == [True, False, True] * 3


def test_cli_check_warns_when_special_tokens_were_dropped(tmp_path, capsys):
    ps = tasks.generate("digit_sum", "test", 2, 1, seed=0)
    tasks.write_problems(ps, tmp_path / "p.jsonl")
    write_lines(tmp_path / "c.jsonl", [{"prompt": p.prompt, "text": "4+5=9" + p.answer} for p in ps])
    assert cli.main(["tasks", "check", "--problems", str(tmp_path / "p.jsonl"),
                     "--completions", str(tmp_path / "c.jsonl")]) == 0
    assert "decode with special tokens kept" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["tasks", "generate", "--task", "chess", "--n", "3", "-o", "X"], "--task: unknown task 'chess'"),
    (["tasks", "generate", "--task", "sort", "--n", "3", "--difficulty", "9", "-o", "X"], "--difficulty: task sort has"),
    (["tasks", "generate", "--task", "sort", "--n", "3", "--difficulty", "hard", "-o", "X"], "--difficulty: difficulty 'hard'"),
    (["tasks", "generate", "--task", "arithmetic", "--split", "test", "--n", "900", "-o", "X"],
     "--n: only .* allow repeats"),
    (["tasks", "check", "--problems", "MISSING", "--completions", "X"], "--problems .*MISSING: no such file"),
    (["tasks", "check", "--problems", "P", "--completions", "X", "--reward", "accuracy=high"], "--reward: reward weight"),
    (["tasks", "check", "--problems", "P", "--completions", "X", "--reward", "style"], "--reward: unknown reward 'style'"),
    (["tasks", "check", "--problems", "P", "--completions", "X", "--checker", "fuzzy"], "--checker: unknown checker"),
    (["tasks", "check", "--problems", "P", "--completions", "X", "--checker", '{"name": "numeric", "tol": 1}'],
     "--checker: .*no option 'tol'"),
    (["tasks", "check", "--problems", "P", "--completions", "X", "--checker", '{"name": "numeric"'],
     "--checker: Expecting"),
    (["tasks", "check", "--problems", "P", "--completions", "BADLINE"], r"--completions .*c.jsonl:2: not valid JSON"),
    (["tasks", "check", "--problems", "P", "--completions", "OTHER"], "its prompt is not one of the problems"),
    (["tasks", "check", "--problems", "P", "--completions", "NOTEXT"], 'no completion: expected "completion"'),
    (["tasks", "check", "--problems", "LATIN1", "--completions", "X"], r"--problems .*l1.jsonl: cannot read it .*utf-8"),
])
def test_cli_bad_inputs_exit_2_with_one_clear_line(tmp_path, capsys, argv, match):
    ps = tasks.generate("sort", "test", 2, 1, seed=0)
    tasks.write_problems(ps, tmp_path / "p.jsonl")
    c = tmp_path / "c.jsonl"
    subs = {"X": str(tmp_path / "x.jsonl"), "P": str(tmp_path / "p.jsonl"), "MISSING": str(tmp_path / "MISSING"),
            "BADLINE": str(c), "OTHER": str(c), "NOTEXT": str(c), "LATIN1": str(tmp_path / "l1.jsonl")}
    if "LATIN1" in argv:  # not UTF-8: a clear error, not a traceback
        (tmp_path / "l1.jsonl").write_bytes('{"prompt": "caf\u00e9", "answer": "1"}\n'.encode("latin-1"))
    if "BADLINE" in argv:
        c.write_text(json.dumps({"prompt": ps[0].prompt, "text": "x"}) + "\n{oops\n")
    if "OTHER" in argv:
        write_lines(c, [{"prompt": "What is 1 + 1?", "text": "2"}])
    if "NOTEXT" in argv:
        write_lines(c, [{"prompt": ps[0].prompt, "answer": "1"}])
    assert cli.main([subs.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nanoseek tasks: error: ")
    import re
    assert re.search(match, err), err


def test_cli_argparse_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["tasks", "generate", "--task", "sort", "--n", "0", "-o", "x"])
    assert e.value.code == 2 and "must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["tasks", "generate", "--task", "sort", "--n", "2", "--format", "csv", "-o", "x"])
    assert e.value.code == 2


def test_fact_drills_hold_every_step_the_worked_solutions_use_and_all_are_right():
    from nanoseek.data.tasks.drills import steps

    table = set(steps())
    docs = tasks.drill_documents(50, seed=3, per_document=16)
    assert docs == tasks.drill_documents(50, seed=3, per_document=16) and len(docs) == 50
    assert all(len(d.split("\n")) == 16 and set(d.split("\n")) <= table for d in docs)
    for step in table:  # each step is true
        expr, _, result = step.partition("=")
        q, _, r = result.partition(" r ")
        value = eval(expr.replace("/", "//"))  # noqa: S307 (our own digits and operators)
        assert value == int(q) and (not r or eval(expr.replace("/", "%")) == int(r)), step
    # every one-digit step of the column procedures appears in the table, written the same way
    import re

    step_shape = re.compile(r"\d[+*]\d(?:[+]\d)?=\d+|\d-(?:1-)?\d=\d+|1\d-\d=\d|\d{1,2}/\d=\d+|\d{1,2}-\d{1,2}=\d")
    seen = 0
    for name in ("arithmetic", "units", "word_problem"):
        for p in tasks.generate(name, "train", 300, "1-3", seed=2, unique=False):
            for line in tasks.worked_solution(p).reasoning.split("\n"):
                for part in line.replace("borrow: ", "").split(", "):
                    if step_shape.fullmatch(part):
                        n, _, d = part.partition("=")[0].partition("/")
                        if d and int(n) >= 10 * int(d):
                            continue  # a division's result line ("86/2=43"), not one of its steps
                        a, minus, b = part.partition("=")[0].partition("-")
                        if minus and len(b) == 2 and (int(part.partition("=")[2]) >= 10 or "/" not in line):
                            continue  # a result line ("19-2=17", "85-83=2"), not a step
                        seen += 1
                        assert part in table, (name, part)
    assert seen > 1000


def test_sft_follow_ups_ask_a_share_of_problems_after_answered_earlier_questions(tmp_path):
    """A model trained on single-question chats answers a question asked after others badly (the speedrun's SFT
    model: 91.9% alone, 49.3% after one earlier question). follow_ups puts that share of the conversations
    after one or two earlier questions of the set, answered without reasoning and not trained on."""
    ps = tasks.generate("arithmetic", "train", 400, "1-2", seed=0, unique=False)
    out = tmp_path / "sft.jsonl"
    assert tasks.write_sft(ps, out, follow_ups=0.3) == 400
    records = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    follow = [m for m in records if len(m) > 2]
    assert 0.2 < len(follow) / len(records) < 0.4
    assert {len(m) for m in follow} == {4, 6}
    answers = {p.answer for p in ps}
    for p, m in zip(ps, records):
        sol = tasks.worked_solution(p)
        assert m[-2:] == [{"role": "user", "content": p.prompt},
                          {"role": "assistant", "reasoning": sol.reasoning, "content": sol.answer}]
        for earlier in m[1:-2:2]:  # what a chat client sends back: the answer, no reasoning, weight 0
            assert earlier["role"] == "assistant" and earlier["content"] in answers
            assert earlier["weight"] == 0 and "reasoning" not in earlier
    again = tmp_path / "again.jsonl"
    tasks.write_sft(ps, again, follow_ups=0.3)
    assert again.read_bytes() == out.read_bytes()  # the same data for the same problems
    tasks.write_sft(ps, again)
    assert all(len(json.loads(line)["messages"]) == 2 for line in again.read_text().splitlines())
    with pytest.raises(DataError, match="follow_ups must be a share"):
        tasks.write_sft(ps, again, follow_ups=1.5)
