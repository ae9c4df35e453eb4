"""`nanoseek speedrun --preset smoke` end to end: every artefact exists and loads (tokenizer, each stage's
checkpoint, report.md with its plots, a chat answer from the final model through the engine), a rerun does no
stage twice, an interrupted run continues from the stage it stopped in, and bad input exits 2. The smoke run
itself is conftest's smoke_run, which test_report reads too."""

from __future__ import annotations

import json
import shutil

import pytest

from nanoseek.cli import main as cli
from nanoseek.speedrun import STAGES, stages
from nanoseek.data import tasks
from nanoseek.errors import UserError
from nanoseek.train.log import read_log

from train_helpers import dying_after_log, killed, nanoseek_cmd, run


@pytest.mark.slow
def test_every_artefact_exists_and_loads(smoke_run):
    from nanoseek.engine import Engine, SamplingParams
    from nanoseek.tokenizer import Tokenizer

    out, stdout = smoke_run
    state = json.loads((out / "speedrun.json").read_text())
    assert [s for s in STAGES if state["stages"][s]["done"]] == list(STAGES)
    assert all(state["stages"][s]["seconds"] >= 0 for s in STAGES)
    assert state["machine"]["cpu"] and "preset" in state
    Tokenizer.load(out / "tokenizer")
    assert (out / "tokens" / "manifest.json").is_file()
    for stage in ("pretrain", "sft", "rl"):
        assert (out / stage / "checkpoints" / "latest").is_file()
        results = json.loads((out / "eval" / f"{stage}.json").read_text())
        assert results["settings"]["style"] == ("plain" if stage == "pretrain" else "chat")
        assert len(results["problems"]) == results["summary"]["problems"] > 0
        assert 0 <= results["summary"]["accuracy_se"] <= 0.5
        # after SFT and RL also asked in wordings the training data never used
        held = out / "eval" / f"{stage}_heldout_wordings.json"
        assert held.is_file() == (stage != "pretrain")
        if stage != "pretrain":
            frames = {p.task: tasks.get_task(p.task).frames for p in tasks.read_problems(out / "data" / "test.jsonl")}
            heldout = tasks.read_problems(out / "data" / "test_heldout_wordings.jsonl")
            assert all(frames[p.task][p.meta["wording"]].held_out for p in heldout)
    # pretraining and SFT answered the probe problems at each evaluation: accuracy against tokens
    for stage in ("pretrain", "sft"):
        evals = [r for r in read_log(out / stage) if r["event"] == "eval"]
        assert evals and all(0 <= r["task_accuracy"] <= 1 for r in evals)
    # the training data asks in the training wordings only
    train = tasks.read_problems(out / "data" / "rl.jsonl")
    assert all(not tasks.get_task(p.task).frames[p.meta["wording"]].held_out for p in train)
    # some SFT conversations ask their question after earlier ones, as a chat goes on
    sft = [json.loads(line)["messages"] for line in (out / "data" / "sft.jsonl").read_text().splitlines()]
    assert 0 < sum(len(m) > 2 for m in sft) < len(sft)
    report = (out / "report.md").read_text()
    for section in ("## Model", "## Time and cost", "## Final metrics", "## Plots"):
        assert section in report
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert {"loss.png", "task_accuracy.png", "grpo_reward.png", "grpo_length.png", "expert_maxvio_pretrain.png"} \
        <= set(plots)
    assert all(f"plots/{name}" in report for name in plots)
    assert f"nanoseek chat --checkpoint {out / 'rl'}" in stdout
    engine = Engine.load(out / "rl")  # the final model answers in the chat template
    ids = engine.encode_chat([{"role": "user", "content": "What is 2 + 3?"}])
    answer = engine.generate(ids, SamplingParams(max_new_tokens=8, temperature=0))
    assert answer.finish_reason in ("stop", "length") and answer.token_ids


@pytest.mark.slow
def test_a_rerun_does_no_stage_twice(smoke_run):
    out, _ = smoke_run
    before = json.loads((out / "speedrun.json").read_text())["stages"]
    mtimes = {s: (out / s / "log.jsonl").stat().st_mtime for s in ("pretrain", "sft", "rl")}
    r = run(nanoseek_cmd("speedrun", str(out), "--preset", "smoke"), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    after = json.loads((out / "speedrun.json").read_text())["stages"]
    assert "stage 10/10 report" in r.stdout and "stage 4/10" not in r.stdout  # only the report is redone
    assert {s: after[s]["seconds"] for s in STAGES if s != "report"} == \
        {s: before[s]["seconds"] for s in STAGES if s != "report"}
    assert mtimes == {s: (out / s / "log.jsonl").stat().st_mtime for s in ("pretrain", "sft", "rl")}


@pytest.mark.slow
def test_an_interrupted_run_continues_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    cmd = nanoseek_cmd("speedrun", str(out), "--preset", "smoke")
    killed(cmd, dying_after_log(tmp_path, "checkpoint", stage="sft"))  # right after SFT's first checkpoint
    state = json.loads((out / "speedrun.json").read_text())["stages"]
    assert state["pretrain"]["done"] and not state.get("sft", {}).get("done")
    first = sorted((out / "sft" / "checkpoints").glob("step_*"))
    assert len(first) == 1
    r = run(cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stage 4/10 pretrain" not in r.stdout  # finished stages are skipped
    # killed inside SFT: it continues from its checkpoint instead of starting over
    assert "stage 6/10 sft" in r.stdout and f"resumed from {first[0].name}" in r.stdout
    state = json.loads((out / "speedrun.json").read_text())["stages"]
    assert all(state[s]["done"] for s in STAGES)


@pytest.mark.slow
def test_a_run_copied_elsewhere_and_killed_in_rl_continues_its_rl(smoke_run, tmp_path):
    """RL resumes (its optimizer holds no state for the MTP module, which GRPO never trains) from a run folder
    that was moved: the problems file has another path now, and the same problems in it."""
    out, _ = smoke_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    doc = json.loads((copy / "speedrun.json").read_text())
    for stage in ("rl", "eval_rl", "report"):  # as if killed after RL's first checkpoint
        doc["stages"][stage]["done"] = False
    (copy / "speedrun.json").write_text(json.dumps(doc))
    ckpts = sorted((copy / "rl" / "checkpoints").glob("step_*"))
    assert len(ckpts) > 1
    for later in ckpts[1:]:
        shutil.rmtree(later)
    (copy / "rl" / "checkpoints" / "latest").write_text(ckpts[0].name + "\n")
    r = run(nanoseek_cmd("speedrun", str(copy), "--preset", "smoke"), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "stage 8/10 rl" in r.stdout and f"resumed from {ckpts[0].name}" in r.stdout
    assert "stage 7/10" not in r.stdout  # SFT's evaluation stays done
    assert all(json.loads((copy / "speedrun.json").read_text())["stages"][s]["done"] for s in STAGES)


@pytest.mark.slow
def test_also_runs_r1_zero_the_random_control_and_pass_at_8_beside_a_finished_run(smoke_run, tmp_path):
    """--also on a finished run: only the added runs are done (R1-Zero from the pretrained model in its plain
    format, GRPO from SFT with a random reward, SFT and RL sampled 8 times a problem), and the report sets them
    side by side with a plot of the GRPO runs."""
    out, _ = smoke_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = run(nanoseek_cmd("speedrun", str(copy), "--preset", "smoke", "--also", "pass-at-8", "r1-zero",
                         "random-reward"), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    order = stages(("r1-zero", "random-reward", "pass-at-8"))
    assert len(order) == 16 and order[-1] == "report"
    assert "stage 4/16" not in r.stdout and "stage 8/16" not in r.stdout  # pretraining and RL stay done
    assert "stage 10/16 rl_zero" in r.stdout and "stage 12/16 rl_random" in r.stdout
    state = json.loads((copy / "speedrun.json").read_text())["stages"]
    assert all(state[s]["done"] for s in order)
    zero = next(x for x in read_log(copy / "rl_zero") if x["event"] == "start")["config"]
    control = next(x for x in read_log(copy / "rl_random") if x["event"] == "start")["config"]
    assert zero["prompt_style"] == "plain" and control["reward"] == "random"
    assert f"model: {copy / 'pretrain'}" in r.stdout and f"model: {copy / 'sft'}" in r.stdout  # where each starts
    assert json.loads((copy / "eval" / "rl_zero.json").read_text())["settings"]["style"] == "plain"
    sampled = json.loads((copy / "eval" / "rl_pass8.json").read_text())
    assert sampled["settings"]["samples"] == 8 and 0 <= sampled["summary"]["pass@8"] <= 1
    assert sampled["checkpoint"].startswith(str(copy / "rl"))
    report = (copy / "report.md").read_text()
    paths = report[report.index("### RL paths side by side"):]
    assert all(run_name in paths for run_name in ("R1: SFT, then GRPO", "R1-Zero:", "control:"))
    assert "### Sampled: pass@1, pass@8 and maj@8" in report
    assert (copy / "plots" / "grpo_paths.png").is_file() and "plots/grpo_paths.png" in report
    costs = report[report.index("## Time and cost"):report.index("## Final metrics")]
    assert "| R1-Zero (GRPO from the base model) |" in costs and "| eval rl pass8 |" in costs


def test_also_names_what_it_can_add(tmp_path, capsys):
    with pytest.raises(UserError, match="r1-zero, random-reward, pass-at-8"):
        stages(("r2",))
    with pytest.raises(SystemExit):
        cli(["speedrun", str(tmp_path / "a"), "--preset", "smoke", "--also", "r2"])
    assert "--also" in capsys.readouterr().err


def test_bad_input_exits_2(tmp_path, capsys):
    assert cli(["speedrun", str(tmp_path / "a"), "--preset", "smoke", "--data", str(tmp_path / "missing")]) == 2
    assert "--data" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli(["speedrun", str(tmp_path / "file"), "--preset", "smoke"]) == 2
    assert "is a file" in capsys.readouterr().err
    # a run continued with another preset is refused (its stages were made by the first one)
    out = tmp_path / "b"
    out.mkdir()
    (out / "speedrun.json").write_text(json.dumps({"preset": {"name": "cpu", "data": None}, "stages": {}}))
    assert cli(["speedrun", str(out), "--preset", "smoke"]) == 2
    assert "preset 'cpu'" in capsys.readouterr().err


@pytest.mark.parametrize("content", [
    b"[1, 2]", b"null", b'"a string"', b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", b"{not json",
    b'{"preset": {"name": "smoke", "data": null}, "stages": []}',
    b'{"preset": {"name": "smoke", "data": null}, "stages": {"tasks": {"done": "no"}}}',
    b'{"preset": {"name": "smoke", "data": null}, "stages": {"tasks": {"done": true, "seconds": "x"}}}',
    b'{"preset": {"name": "smoke", "data": null}, "stages": {"tasks": 5}}',
    b'{"preset": {"name": "smoke", "data": null}}',
    b'{"preset": "smoke", "stages": {}}',
    b'{"preset": {"name": "smoke", "data": "corpus.txt"}, "stages": {}}',
    b'{"format_version": 99, "preset": {"name": "smoke", "data": null}, "stages": {}}',
])
def test_a_damaged_state_file_gets_the_start_over_advice(tmp_path, capsys, content):
    """speedrun.json that is not the shape the command writes (issue 22.7): one message, never a traceback."""
    (tmp_path / "speedrun.json").write_bytes(content)
    assert cli(["speedrun", str(tmp_path), "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nanoseek speedrun: error: ") and len(err.splitlines()) == 1, err
    assert err.endswith("delete it to start the run over"), err


def test_a_preset_writes_its_corpus_and_sft_solutions_in_its_strategy_mix(tmp_path, capsys):
    """corpus_strategies / sft_strategies decide how the run's solutions are written, the run says the shares it
    wrote, and the held-out files are checked against the training files."""
    import dataclasses

    from nanoseek.data.tasks import strategies
    from nanoseek.speedrun import PRESETS, run_paths, write_tasks

    preset = dataclasses.replace(PRESETS["smoke"], drills=0, corpus_strategies="direct",
                                 sft_strategies="direct=0.5,worked=0.5")
    paths = run_paths(tmp_path)
    paths["corpus"].parent.mkdir(parents=True)
    write_tasks(preset, paths)
    said = capsys.readouterr().out
    docs = paths["corpus"].read_text().strip().split("\n\n")
    assert docs and all(len(d.splitlines()) == 3 and d.splitlines()[2].startswith("Answer: ") for d in docs)
    ways = [strategies.strategy_of(json.loads(line)["messages"][-1]["reasoning"])
            for line in paths["sft"].read_text().splitlines()]
    assert 0.3 < ways.count("direct") / len(ways) < 0.8 and "worked" in ways
    assert "solutions: pretraining 100% direct, SFT " in said
