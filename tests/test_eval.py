"""Evaluation: task accuracy, pass@k and maj@k through the Python API (hand-computed, on a stub engine) and
through `nanoseek eval` on a tiny model whose correct answers we control; bits per byte equal to what
pretraining's evaluation logged; the command's outputs and errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from nanoseek.cli import main as cli
from nanoseek.data import tasks
from nanoseek.eval import completion_records, evaluate_tasks, results_markdown, sample_seed
from nanoseek.eval.metrics import Sample, summarize
from nanoseek.train.log import read_log

from chat_helpers import build_checkpoint, build_tokenizer
from cli_helpers import cli_error
from train_helpers import build_data


# ---- the Python API on a stub engine ---------------------------------------------------------------------------
class StubEngine:
    """Answers each (prompt, sample seed) with a fixed completion; records what it was asked."""

    def __init__(self, answers: dict[str, list[tuple[str, str]]], seed: int = 0, max_batch: int = 2):
        self.scheduler = SimpleNamespace(max_batch=max_batch)
        self.by_seed = {}
        for i, (prompt, outs) in enumerate(answers.items()):
            for j, (text, finish) in enumerate(outs):
                self.by_seed[(prompt, sample_seed(seed, i, j))] = (text, finish)
        self.calls = []

    def encode_chat(self, messages):
        assert messages == [{"role": "user", "content": messages[0]["content"]}]  # the eval prompt: no solution
        return messages[0]["content"]

    def generate(self, prompts, params):
        self.calls.append((list(prompts), list(params)))
        outs = []
        for p, sp in zip(prompts, params):
            assert sp.skip_special_tokens is False  # <think> tags must reach the answer extraction
            text, finish = self.by_seed[(p, sp.seed)]
            outs.append(SimpleNamespace(text=text, finish_reason=finish, token_ids=[0] * len(text), prompt_ids=[0] * 3))
        return outs


def _problems():
    custom = tasks.problem_from_record({"prompt": "Say two.", "answer": "2"}, "test")
    arith = tasks.generate("arithmetic", "test", 1, 1)[0]
    a = arith.answer
    wrong = str(int(a) + 1)
    answers = {
        custom.prompt: [("<think>1+1\n1+1=2</think>2", "stop"), ("<think>b</think>3", "stop"), ("<think>c</think>2", "stop"),
                        ("5", "stop")],
        arith.prompt: [(f"<think>x</think>{wrong}", "stop"), (f"<think>x</think>{wrong}", "stop"), ("<think>y", "length"),
                       (a, "stop")],
    }
    return [custom, arith], answers


def test_evaluate_tasks_hand_computed():
    problems, answers = _problems()
    engine = StubEngine(answers)
    res = evaluate_tasks(engine, problems, samples=4, k=(1, 2, 4), keep_completions=True)
    assert res["settings"]["temperature"] == 1.0  # several samples: sampled by default
    custom, arith, both = res["rows"]
    assert (custom["task"], arith["task"], both["task"]) == ("custom", "arithmetic", "all") and res["summary"] == both
    # custom: right [1,0,1,0], votes 2,3,2,5; arithmetic: right [0,0,0,1], votes w,w,-,a
    assert custom["accuracy"] == 0.5 and custom["pass@2"] == pytest.approx(1 - 1 / 6)
    assert custom["maj@2"] == 1.0 and custom["maj@4"] == 1.0  # the 2-3 tie goes to the first answer
    assert arith["accuracy"] == 0.25 and arith["pass@2"] == pytest.approx(0.5) and arith["pass@4"] == 1.0
    assert arith["maj@4"] == 0.0  # the wrong answer has two votes, the unfinished sample none
    assert both["problems"] == 2 and both["samples"] == 4
    assert both["accuracy"] == 0.375 and both["pass@2"] == pytest.approx((5 / 6 + 0.5) / 2) and both["maj@4"] == 0.5
    assert both["format_rate"] == 5 / 8 and both["truncated_rate"] == 1 / 8
    assert res["by_difficulty"] == []  # one level per task
    # which strategy each answer followed and how often each was right: one worked (right), five direct (one
    # right; the unfinished <think>y counts), two without reasoning (one right)
    assert [(r["strategy"], r["samples"], r["accuracy"]) for r in res["by_strategy"]] == [
        ("direct", 5, 0.2), ("worked", 1, 1.0), ("none", 2, 0.5)]
    recs = completion_records(res)
    assert len(recs) == 8 and [r["correct"] for r in recs] == [True, False, True, False, False, False, False, True]
    assert recs[6]["answer"] is None and recs[6]["finish_reason"] == "length"
    # batching does not change anything: one problem per engine call, or all at once
    one = evaluate_tasks(StubEngine(answers), problems, samples=4, k=(1, 2, 4), chunk=1)
    assert one["rows"] == res["rows"]
    assert len(engine.calls) == 1 and len(engine.calls[0][0]) == 8  # 4 x max_batch requests per call by default
    md = results_markdown(res)
    assert "| task | problems | samples | accuracy | accuracy_se | pass@1 | maj@1 | pass@2 |" in md
    assert "| all | 2 | 4 | 37.5% | 12.5% |" in md
    assert "| strategy | samples | share | accuracy |" in md and "| direct | 5 | 62.5% | 20.0% |" in md


def test_evaluate_tasks_checks_its_arguments():
    problems, answers = _problems()
    with pytest.raises(ValueError, match="every k must be in 1..samples"):
        evaluate_tasks(StubEngine(answers), problems, samples=2, k=(4,))
    with pytest.raises(ValueError, match="no problems"):
        evaluate_tasks(StubEngine(answers), [], samples=1)


# ---- the command on a tiny model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_ckpt")
    return build_checkpoint(root, build_tokenizer(root))


def _eval(capsys, *args) -> tuple[int, str, str]:
    rc = cli(["eval", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_eval_command_scores_answers_we_control(ckpt, tmp_path, capsys):
    """The right answers are the model's own greedy outputs for half the prompts: greedy accuracy, pass@k and
    maj@k are then known exactly. A sampled run is reproducible and its JSON equals what its completions give."""
    prompts = [f"What is {a} + {b}?" for a, b in [(1, 2), (30, 4), (5, 66), (7, 8), (12, 13), (40, 2), (9, 9), (3, 70)]]
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps({"prompt": p, "answer": "?"}) + "\n" for p in prompts))
    comp = tmp_path / "greedy.jsonl"
    rc, out, err = _eval(capsys, "--checkpoint", str(ckpt), "--problems", str(probe), "--max-tokens", "6",
                         "--completions", str(comp))
    assert rc == 0, err
    greedy = [json.loads(line) for line in comp.read_text().splitlines()]
    assert [g["prompt"] for g in greedy] == prompts and all(g["correct"] is False for g in greedy)
    answers = [g["answer"] for g in greedy]
    right = [i % 2 == 0 and a is not None for i, a in enumerate(answers)]
    assert sum(right) >= 2, answers  # a random tiny model still says something
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"prompt": p, "answer": a if ok else "certainly not this"}) + "\n"
                                for p, a, ok in zip(prompts, answers, right)))

    js, md = tmp_path / "greedy.json", tmp_path / "greedy.md"
    rc, out, err = _eval(capsys, "--checkpoint", str(ckpt), "--problems", str(problems), "--max-tokens", "6",
                         "--samples", "3", "--temperature", "0", "--k", "1,3", "--out", str(js), "--markdown", str(md))
    assert rc == 0, err
    res = json.loads(js.read_text())
    row = res["tasks"]["summary"]
    expect = sum(right) / len(prompts)
    for key in ("accuracy", "pass@1", "pass@3", "maj@1", "maj@3"):  # greedy: all samples alike
        assert row[key] == pytest.approx(expect), key
    assert row["problems"] == 8 and row["samples"] == 3 and row["truncated_rate"] <= 1.0
    assert res["checkpoint"] == str(ckpt) and res["tasks"]["settings"]["temperature"] == 0.0
    assert md.read_text() == out.split(f"wrote {md}")[0]  # the table printed is the one written
    assert f"| custom | 8 | 3 | {100 * expect:.1f}% |" in md.read_text()

    def sampled(name):
        comp = tmp_path / f"{name}.jsonl"
        args = ["--checkpoint", str(ckpt), "--problems", str(problems), "--max-tokens", "6", "--samples", "4",
                "--k", "1,2,4", "--seed", "3", "--temperature", "0.01", "--out", str(tmp_path / f"{name}.json"), "--completions", str(comp)]
        assert _eval(capsys, *args)[0] == 0
        return json.loads((tmp_path / f"{name}.json").read_text())["tasks"], \
            [json.loads(line) for line in comp.read_text().splitlines()]

    # a random tiny model's logits are nearly flat: at temperature 0.01 a sample is sometimes the greedy answer
    res1, recs = sampled("s1")
    res2, _ = sampled("s2")
    assert res1["rows"] == res2["rows"]  # seeded per sample: the same run twice gives the same numbers
    assert len(recs) == 32 and len({r["completion"] for r in recs}) > 1
    by_prompt = {}
    for r in recs:
        by_prompt.setdefault(r["prompt"], []).append(Sample(r["correct"], r["answer"]))
    want = summarize(list(by_prompt.values()), [1, 2, 4])
    for key, value in want.items():
        assert res1["summary"][key] == pytest.approx(value), key
    assert 0 < want["accuracy"] < want["pass@4"] < 1  # some samples right, some wrong
    # the completions file is what `nanoseek tasks check` reads
    assert cli(["tasks", "check", "--problems", str(problems), "--completions", str(tmp_path / "s1.jsonl"),
                "--k", "1,2,4", "--json", str(tmp_path / "check.json")]) == 0
    check = json.loads((tmp_path / "check.json").read_text())["rows"][0]
    assert check["pass@4"] == pytest.approx(res1["summary"]["pass@4"])


def test_eval_task_with_few_problems_evaluates_all_it_has(ckpt, capsys):
    rc, out, err = _eval(capsys, "--checkpoint", str(ckpt), "--task", "arithmetic", "--difficulty", "1", "--n", "100",
                         "--max-tokens", "2")
    assert rc == 0, err
    n = len(tasks.generate("arithmetic", "test", 13, 1))  # what the test split holds at level 1
    assert f"holds only {n} distinct arithmetic problems" in err
    assert f"| arithmetic | {n} | 1 |" in out


def test_bits_per_byte_equals_pretrainings_evaluation(tmp_path, capsys):
    data = build_data(tmp_path)
    run = tmp_path / "run"
    assert cli(["pretrain", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "3", "--seq-len", "32",
                "--batch-size", "4", "--eval-batches", "3", "--warmup-steps", "1", "--peak-flops", "1e12"]) == 0
    logged = [r for r in read_log(run) if r["event"] == "eval"][-1]
    capsys.readouterr()
    js = tmp_path / "bpb.json"
    rc, out, err = _eval(capsys, "--checkpoint", str(run), "--data", str(data), "--seq-len", "32", "--eval-batch-size",
                         "4", "--eval-batches", "3", "--dtype", "bf16", "--out", str(js))
    assert rc == 0, err
    bpb = json.loads(js.read_text())["bpb"]
    assert bpb["val_bpb"] == pytest.approx(logged["val_bpb"], rel=1e-9)
    assert bpb["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-9)
    assert f"{bpb['val_bpb']:.4f} bits per byte" in out and "tasks" not in json.loads(js.read_text())


def test_eval_errors_exit_2(ckpt, tmp_path, capsys):
    def err(*args) -> str:
        return cli_error(capsys, ["eval", *args])

    c = ["--checkpoint", str(ckpt)]
    assert "nothing to evaluate" in err(*c)
    assert "needs at least that many --samples" in err(*c, "--task", "sort", "--k", "1,4")
    assert "not both" in err(*c, "--task", "sort", "--problems", "x.jsonl")
    assert "unknown task 'nope'" in err(*c, "--task", "nope")
    assert "difficulty levels 1-" in err(*c, "--task", "sort", "--difficulty", "9")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "answer": "a"}\n{"prompt": "p"\n')
    assert f"{bad}:2" in err(*c, "--problems", str(bad))
    assert "no config.json" in err("--checkpoint", str(tmp_path), "--task", "sort")
    assert "exceeds" in err(*c, "--task", "sort", "--max-tokens", "600")
    assert "is a directory" in err(*c, "--task", "sort", "--out", str(tmp_path))
    assert "is not a directory" in err(*c, "--data", str(bad))


def test_plain_style_asks_the_bare_prompt_and_reads_the_answer_line():
    """A model after pretraining alone knows the tasks' plain text, not the chat template: its prompt is the
    problem's line (after <|bos|>) and its answer the first "Answer:" line of the continuation."""
    arith = tasks.generate("arithmetic", "test", 2, 1)
    right, wrong = arith[0].answer, str(int(arith[1].answer) + 1)

    class PlainEngine(StubEngine):
        tokenizer = SimpleNamespace(bos_id=0, encode=lambda text: [ord(c) for c in text])

        def encode_chat(self, messages):
            raise AssertionError("plain style must not use the chat template")

    prompts = [tuple([0] + [ord(c) for c in tasks.plain_prompt(p)]) for p in arith]
    engine = PlainEngine({})
    engine.by_seed = {(prompts[0], sample_seed(0, 0, 0)): (f"{right}\nAnswer: {right}\n", "stop"),
                      (prompts[1], sample_seed(0, 1, 0)): (f"steps\nAnswer: {wrong}\nWhat is", "stop")}
    real_generate = StubEngine.generate
    engine.generate = lambda ps, params: real_generate(engine, [tuple(p) for p in ps], params)
    res = evaluate_tasks(engine, arith, style="plain")
    assert res["summary"]["accuracy"] == 0.5 and res["summary"]["format_rate"] == 1.0
    # one problem per pretraining document: the next document's <|bos|> (or a blank line) ends the answer
    assert engine.calls[0][1][0].stop == ["\n\n"] and engine.calls[0][1][0].stop_token_ids == [0]
    with pytest.raises(ValueError, match="style"):
        evaluate_tasks(engine, arith, style="json")


def test_one_digit_facts_are_counted_and_checked():
    """The report's fact count: expressions of exactly two one-digit operands, checked; longer expressions
    (a carry added, a borrowed ten) are not facts."""
    from nanoseek.report.facts import fact_accuracy, facts_in

    text = "7+5=12, write 2, carry 1\n4+8+1=13, write 3\n2<3, borrow: 12-3=9\n5-1-1=3\n9-5=3\n4*2=10\n5*6+3=33\n7*8=56"
    assert facts_in(text) == [("7+5=12", True), ("9-5=3", False), ("4*2=10", False), ("7*8=56", True)]
    got = fact_accuracy([text, "no facts here", "3+4=7"])
    assert (got["right"], got["facts"], got["wrong"]) == (3, 5, ["9-5=3", "4*2=10"]) and got["accuracy"] == 0.6
    assert fact_accuracy(["12+30=42"])["accuracy"] is None
    # every fact in the tasks' own worked solutions is right
    from nanoseek.data import tasks

    sols = [tasks.worked_solution(p).reasoning for name in ("arithmetic", "units", "word_problem", "digit_sum")
            for p in tasks.generate(name, "train", 200, "1-3", seed=0, unique=False)]
    f = fact_accuracy(sols)
    assert f["facts"] > 500 and f["accuracy"] == 1.0


def test_after_turns_asks_each_problem_after_other_answered_questions(ckpt, tmp_path, capsys):
    """`--after-turns N` asks each problem as the N+1-th question of one conversation, the earlier questions
    answered with their answers alone (as the chat page and `nanoseek chat` send a conversation back)."""
    from nanoseek.tokenizer import Tokenizer

    ps = tasks.generate("arithmetic", "test", 6, 2, seed=0)
    problems = tmp_path / "p.jsonl"
    tasks.write_problems(ps, problems)
    tok = Tokenizer.load(ckpt)
    prompt_tokens = {}
    for n in (0, 2):
        js = tmp_path / f"after{n}.json"
        rc, _, err = _eval(capsys, "--checkpoint", str(ckpt), "--problems", str(problems), "--max-tokens", "2",
                           "--after-turns", str(n), "--out", str(js))
        assert rc == 0, err
        res = json.loads(js.read_text())["tasks"]
        assert res["settings"]["after_turns"] == n
        prompt_tokens[n] = res["tokens"]["prompt"]
    asked = [tasks.earlier_turns(tasks.earlier_problems(ps, i, 2)) + tasks.chat_messages(p, with_solution=False)
             for i, p in enumerate(ps)]
    assert prompt_tokens[2] == sum(len(tok.render_chat(m, add_generation_prompt=True)[0]) for m in asked)
    assert prompt_tokens[2] > prompt_tokens[0]
    for i, m in enumerate(asked):  # two other problems, answered, then the problem itself
        assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant", "user"]
        assert m[-1]["content"] == ps[i].prompt and ps[i].prompt not in (m[0]["content"], m[2]["content"])
        assert m[1]["content"] in {p.answer for p in ps} and "reasoning" not in m[1]

    rc, _, err = _eval(capsys, "--checkpoint", str(ckpt), "--problems", str(problems), "--after-turns", "1",
                       "--style", "plain")
    assert rc == 2 and "--after-turns asks in a conversation" in err and "--style chat" in err
    rc, _, err = _eval(capsys, "--checkpoint", str(ckpt), "--problems", str(problems), "--after-turns", "500")
    assert rc == 2 and "context" in err and "lower --max-tokens or --after-turns" in err
    one = tmp_path / "one.jsonl"
    tasks.write_problems(ps[:1], one)
    rc, _, err = _eval(capsys, "--checkpoint", str(ckpt), "--problems", str(one), "--after-turns", "1")
    assert rc == 2 and "at least two problems" in err
