"""The report card: `nanoseek report RUN` on the folder of a smoke speedrun (the real commands: tasks, tokenizer,
data, pretrain, sft, rl, eval), on parts of it and on a lone training run; every plot a real PNG; synthetic logs and
evaluation files for what a tiny run does not show (long runs, sparse expert loads, reasoning with markdown in
it); and every unreadable file an exit code 2 naming it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import struct
from pathlib import Path

import pytest

from nanoseek.cli import build_parser
from nanoseek.cli import main as cli
from nanoseek.config import ModelConfig
from nanoseek.model import count_params
from nanoseek.report import decode, plots, write_report
from nanoseek.train.log import read_log

from cli_helpers import cli_error

PLOTS = ("loss.png", "task_accuracy.png", "grpo_reward.png", "grpo_length.png", "grpo_strategies.png", "expert_load_pretrain.png",
         "expert_load_sft.png", "expert_load_rl.png", "expert_maxvio_pretrain.png", "expert_maxvio_sft.png")
SECTIONS = ("# Report card", "## Model", "## Machine", "## Time and cost", "## Final metrics",
            "### Task accuracy after each stage", "### Decoding the final model", "## Plots",
            "## The final model's answers")


@pytest.fixture
def run(smoke_run) -> Path:
    """The smoke speedrun's folder (conftest's smoke_run: the real commands, once per session). Tests copy what they
    change."""
    return smoke_run[0]


def _copy(run: Path, dest: Path, parts=None) -> Path:
    """The run folder (or some of its parts) copied, so a test can change it."""
    if parts is None:
        shutil.copytree(run, dest, ignore=shutil.ignore_patterns("report.md", "plots"))
    else:
        dest.mkdir()
        for p in parts:
            shutil.copytree(run / p, dest / p)
    return dest


def _report(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli(["report", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking that the whole file decodes."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    with Image.open(path) as im:
        im.load()  # decodes every row: a truncated file fails here
    return struct.unpack(">II", data[16:24])


def _linked_plots(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(plots/([^)]+)\)", md)


# ---- on real command output ---------------------------------------------------------------------------------
@pytest.mark.slow  # the whole card with its measured decode and every plot: ~5 s
def test_report_of_a_whole_run(run, tmp_path, capsys, monkeypatch):
    run = _copy(run, tmp_path / "run")
    # the final model evaluated again by hand, its samples beside the results (`nanoseek eval --completions`)
    assert cli(["eval", "--checkpoint", str(run / "rl"), "--task", "arithmetic,sort", "--n", "3", "--max-tokens", "24",
                "--style", "chat", "--out", str(run / "eval" / "rl.json"),
                "--completions", str(run / "eval" / "rl.completions.jsonl")]) == 0
    monkeypatch.setattr(decode, "DECODE_TOKENS", 16)  # the tiny model's answers are short anyway
    rc, out, err = _report(capsys, str(run))
    assert rc == 0, err
    assert f"wrote {run / 'report.md'} and {len(PLOTS)} plot(s)" in out
    md = (run / "report.md").read_text()
    pos = [md.index(s) for s in SECTIONS]
    assert pos == sorted(pos), "sections out of order"
    assert "Missing" not in md and "Traceback" not in md

    # the model: counts of the final (RL) checkpoint's config
    ckpt = run / "rl" / "checkpoints" / (run / "rl" / "checkpoints" / "latest").read_text().strip()
    pc = count_params(ModelConfig.load(ckpt))
    assert f"`rl/checkpoints/{ckpt.name}`" in md
    for label, n in (("total", pc.total), ("active per token", pc.active), ("embedding (input + output head)",
                                                                             pc.embedding)):
        assert f"| {label} | {n:,} |" in md

    # time and cost: each training stage's tokens as its log has them, and a total row
    for stage, name in (("pretrain", "pretraining"), ("sft", "SFT"), ("rl", "RL (GRPO)")):
        tokens = [r for r in read_log(run / stage) if r["event"] == "train"][-1]["tokens"]
        assert re.search(rf"^\| {re.escape(name)} \| [\d.]+ s \| {tokens:,} \| [\d.]+ [MG]FLOP \| [\d.]+% \|", md, re.M)
    assert "| **total** |" in md and "### The same" in md and "| NVIDIA H100 SXM |" in md

    # final metrics: bits per byte from the log, accuracy per stage with its style, decoding measured
    last = [r for r in read_log(run / "pretrain") if r["event"] == "eval"][-1]
    assert f"**{last['val_bpb']:.4f}**" in md
    rows = {m.group(1): m.group(2)
            for m in re.finditer(r"^\| (pretraining|SFT|RL \(GRPO\)) \| (plain|chat) ", md, re.M)}
    assert rows == {"pretraining": "plain", "SFT": "chat", "RL (GRPO)": "chat"}
    assert re.search(r"\| MTP speculation auto \(the default\) \| \*\*[\d,.]+\*\* \| ([\d.]+%|—) \|", md)
    assert re.search(r"\| one token per step \| \*\*[\d,.]+\*\* \| — \|", md)
    assert re.search(r"agreed on (\d) of \1 prompt\(s\)", md)  # greedy speculation changes nothing

    # plots: every one linked, there, a real PNG of a readable size
    assert sorted(_linked_plots(md)) == sorted(PLOTS)
    for name in PLOTS:
        w, h = _png_size(run / "plots" / name)
        assert w >= 800 and h >= 350, (name, w, h)
        assert 10_000 < (run / "plots" / name).stat().st_size < 2_000_000, name

    # the answers: from the RL evaluation's completions, each marked and with its reference
    answers = md[md.index("## The final model's answers"):]
    assert "`eval/rl.completions.jsonl`" in answers
    samples = [json.loads(x) for x in (run / "eval" / "rl.completions.jsonl").read_text().splitlines()]
    heads = re.findall(r"^### \d\. (arithmetic|sort), level \d: (✅ right|❌ wrong)$", answers, re.M)
    assert len(heads) == 6 and {t for t, _ in heads} == {"arithmetic", "sort"}
    for s in samples:
        assert f"**Problem:** {s['prompt']}" in answers
        assert f"reference `{s['reference']}`" in answers


def test_what_rl_changed_on_the_same_problems(run, tmp_path, capsys):
    """The SFT and RL evaluations of one run answer the same held-out problems: the report counts the answers RL
    fixed and broke, and shows one it fixed before and after (or says none was)."""
    run = _copy(run, tmp_path / "run")
    rc, _, err = _report(capsys, str(run))
    assert rc == 0, err
    md = (run / "report.md").read_text()
    by_stage = {s: {p["prompt"]: p["samples"][0]["correct"] for p in json.loads((run / "eval" / f"{s}.json")
                                                                               .read_text())["problems"]}
                for s in ("sft", "rl")}
    fixed = sum(not by_stage["sft"][p] and ok for p, ok in by_stage["rl"].items())
    broken = sum(by_stage["sft"][p] and not ok for p, ok in by_stage["rl"].items())
    section = md[md.index("## What RL changed"):]
    assert (f"Of {len(by_stage['rl'])} held-out answers given both after SFT and after RL, {fixed} went from wrong to "
            f"right and {broken} from right to wrong.") in section
    assert ("### After SFT" in section and "### After RL" in section) == (fixed > 0)
    assert "| strategies |" in md  # the accuracy table names how each stage's answers were reached


def test_speedrun_json_gives_times_machine_and_preset(run, tmp_path, capsys):
    R = _copy(run, tmp_path / "run")
    stages = {s: {"done": True, "seconds": sec} for s, sec in (
        ("tasks", 1.5), ("tokenizer", 2.0), ("tokens", 3.0), ("pretrain", 61.0), ("eval_pretrain", 4.0), ("sft", 30.0),
        ("eval_sft", 5.0), ("rl", 90.0), ("eval_rl", 6.0))}
    stages["report"] = {"done": True, "seconds": 0.0}
    stages["rl"]["done"] = False
    (R / "speedrun.json").write_text(json.dumps({
        "format_version": 1, "preset": {"name": "smoke", "pretrain_steps": 6}, "stages": stages,
        "started": "2026-01-02T03:04:05", "machine": {"cpu": "Test CPU 9000", "amx_bf16": True, "threads": 2,
                                                       "device": "cpu", "gpu": None}}))
    rc, _, err = _report(capsys, str(R), "--no-measure")
    assert rc == 0, err
    md = (R / "report.md").read_text()
    assert "Preset **smoke**, started 2026-01-02T03:04:05" in md and '"pretrain_steps": 6' in md
    assert "| CPU | Test CPU 9000 |" in md and "| AMX bf16 matmuls | yes |" in md and "| GPU | — |" in md
    assert re.search(r"^\| pretraining \| 1\.0 min \|", md, re.M)
    assert re.search(r"^\| RL \(GRPO\) \| 1\.5 min \| .* \| not finished \|$", md, re.M)
    assert re.search(r"^\| tasks \| 1\.5 s \|", md, re.M) and "| **total** | **3.4 min** |" in md  # 202.5 s
    assert re.search(r"^\| eval rl \| 6 s \|", md, re.M) and "| report |" not in md  # its own time is unknown
    assert "Not measured (`--no-measure`)" in md


def test_a_pretraining_only_folder_says_what_is_missing(run, tmp_path, capsys):
    R = _copy(run, tmp_path / "run", ["tokenizer", "tokens", "pretrain"])
    rc, _, err = _report(capsys, str(R), "--no-measure")
    assert rc == 0, err
    md = (R / "report.md").read_text()
    latest = (R / "pretrain" / "checkpoints" / "latest").read_text().strip()
    assert f"`pretrain/checkpoints/{latest}` (after pretraining)" in md
    assert f"`nanoseek eval --checkpoint {R}/pretrain --task all --style plain --out {R}/eval/pretrain.json" in md
    assert f"no RL steps logged (`nanoseek rl --checkpoint {R}/sft --problems {R}/data/rl.jsonl --out {R}/rl" in md
    # every command the report suggests is one nanoseek's own parser accepts (hints cannot drift from the CLI)
    commands = [c for c in re.findall(r"`(nanoseek [^`]+)`", md) if " --" in c]  # not mere names: `nanoseek report`
    assert len(commands) >= 5
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert callable(args.func), command
    assert "*Missing: the final model's sampled answers" in md
    made = ["expert_load_pretrain.png", "expert_maxvio_pretrain.png", "loss.png", "task_accuracy.png"]
    assert sorted(_linked_plots(md)) == made
    assert sorted(p.name for p in (R / "plots").iterdir()) == made
    assert f"| SFT validation | missing: `nanoseek sft --checkpoint {R}/pretrain" in md and "| pretraining |" in md


def test_a_lone_training_run_directory(run, tmp_path, capsys):
    R = tmp_path / "sft"
    shutil.copytree(run / "sft", R)
    assert write_report(R, measure=False) == R / "report.md"  # the Python API
    md = (R / "report.md").read_text()
    assert "A lone SFT run" in md and "bits per byte" not in md and "| SFT validation |" in md and "| SFT |" in md
    assert (R / "plots" / "loss.png").is_file() and (R / "plots" / "expert_load_sft.png").is_file()
    assert "GRPO" not in md and "RL validation" not in md  # a lone run is not missing the other stages


def test_measure_decode_of_a_pretrained_model_in_the_plain_style(run):
    ckpt = run / "pretrain" / "checkpoints" / (run / "pretrain" / "checkpoints" / "latest").read_text().strip()
    d = decode.measure_decode(ckpt, ["What is 1 + 2?", "What is 3 + 4?"], chat=False, max_new_tokens=8)
    assert d["device"] in ("cpu", "cuda") and d["max_new_tokens"] == 8
    spec, plain = d["speculative"], d["plain"]
    assert spec["prompts"] == plain["prompts"] == 2 and 0 < plain["tokens"] <= 16 and plain["acceptance_rate"] is None
    assert spec["draft_tokens"] == 1 and spec["tokens_per_s"] > 0 and d["compared"] == d["same"] == 2
    # speculation "auto": it drafted where it measured that worth it (None: no drafts in these steps)
    assert spec["acceptance_rate"] is None or 0 <= spec["acceptance_rate"] <= 1


def test_a_cut_last_log_line_and_a_run_that_just_started(run, tmp_path, capsys):
    R = _copy(run, tmp_path / "run", ["rl"])
    with open(R / "rl" / "log.jsonl", "a") as f:
        f.write('{"event": "train", "step": 4, "loss"')  # a process killed mid-line
    (R / "pretrain").mkdir()
    start = (run / "pretrain" / "log.jsonl").read_text().splitlines()[0]
    (R / "pretrain" / "log.jsonl").write_text(start + "\n")  # no step yet
    rc, _, err = _report(capsys, str(R), "--no-measure")
    assert rc == 0, err
    md = (R / "report.md").read_text()
    assert re.search(r"^\| pretraining \|( — \|){6} no training step logged yet \|$", md, re.M)
    assert "no evaluation logged" in md and (R / "plots" / "grpo_reward.png").is_file()


def test_unreadable_files_exit_2_naming_them(run, tmp_path, capsys):
    def fails(path: Path, *want: str) -> None:
        cli_error(capsys, ["report", str(path), "--no-measure"], *want)

    fails(tmp_path / "nope", "is not a directory")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "holds nothing to report")

    R = _copy(run, tmp_path / "log", ["pretrain"])
    log = R / "pretrain" / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2] + ['{"event": "train", "step"'] + lines[2:]) + "\n")
    fails(R, f"{log}:3: not a JSON log record")
    log.write_text("\n".join(lines[:2] + ["[1, 2]"] + lines[2:]) + "\n")
    fails(R, f"{log}:3: not a nanoseek log record")
    log.write_text("\n".join(lines[:2] + ['{"event": "start", "step": 0, "config": [1]}'] + lines[2:]) + "\n")
    fails(R, f"{log}:3: \"config\" must be an object")
    log.write_text("\n".join(lines + ['{"event": "train", "step": 7, "tokens": "many"}']) + "\n")
    fails(R, f"{log}: a record has a malformed value")

    R = _copy(run, tmp_path / "eval", ["pretrain", "eval"])
    (R / "eval" / "sft.json").write_text('{"tasks": {"rows": ')
    fails(R, f"{R / 'eval' / 'sft.json'}: not valid JSON")
    (R / "eval" / "sft.json").write_text('{"tasks": {"rows": [{"accuracy": "high"}]}}')
    fails(R, f"{R / 'eval' / 'sft.json'}: no readable task rows")
    (R / "eval" / "sft.json").unlink()
    results = json.loads((R / "eval" / "rl.json").read_text())
    del results["problems"]  # as `nanoseek eval --out` writes them: the samples are in rl.completions.jsonl
    (R / "eval" / "rl.json").write_text(json.dumps(results))
    with open(R / "eval" / "rl.completions.jsonl", "a") as f:
        f.write("not json\n")
    fails(R, f"{R / 'eval' / 'rl.completions.jsonl'}:")

    R = _copy(run, tmp_path / "sr", ["pretrain"])
    (R / "speedrun.json").write_text("[]")
    fails(R, f"{R / 'speedrun.json'}: not a speedrun state (a JSON object was expected")
    (R / "speedrun.json").write_text('{"format_version": 1, "preset": {"name": "cpu"}, "stages": []}')
    fails(R, 'speedrun.json: not a speedrun state ("stages" must be an object')


@pytest.mark.parametrize("step", ["12", "x", 1.5, None, True, -1])
def test_a_log_whose_steps_are_not_whole_numbers_exits_2_naming_the_line(run, tmp_path, capsys, step):
    """Issue 22.8: steps written as strings (or anything but a whole number) once reached the plots and raised."""
    R = _copy(run, tmp_path / "run", ["pretrain", "sft"])
    log = R / "sft" / "log.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines()]
    records[3]["step"] = step
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    cli_error(capsys, ["report", str(R), "--no-measure"], f'{log}:4: "step" must be a whole number, got {json.dumps(step)}')


def test_a_file_or_folder_where_the_report_writes_exits_2_before_any_work(run, tmp_path, capsys):
    R = _copy(run, tmp_path / "a", ["pretrain"])
    (R / "plots").write_text("not a folder")
    rc, out, err = _report(capsys, str(R))
    assert rc == 2 and f"{R / 'plots'} is a file, where the report writes its plots folder" in err, err
    assert "measuring" not in out
    R = _copy(run, tmp_path / "b", ["pretrain"])
    (R / "report.md").mkdir()
    rc, _, err = _report(capsys, str(R), "--no-measure")
    assert rc == 2 and f"{R / 'report.md'} is a folder, where the report writes its report.md" in err, err
    assert not list(R.glob(".report.md.*")) and not (R / "plots").exists()


# ---- synthetic logs and results -------------------------------------------------------------------------------
def _long_log(steps: int, every: int = 1) -> list[dict]:
    """A pretraining-like log: noisy falling loss, a non-finite value, expert loads logged every `every` steps
    with an MTP layer whose loads are all zero (a stage that does not run it)."""
    import math
    import random

    rng = random.Random(0)
    recs = [{"event": "start", "step": 0, "time": 0.0, "config": {"seq_len": 64}}]
    for s in range(1, steps + 1):
        r = {"event": "train", "step": s, "time": float(s), "loss": 6 * math.exp(-s / 200) + rng.random() * 0.3,
             "main_loss": 5 * math.exp(-s / 200) + 1 + rng.random() * 0.3,
             "mtp_losses": [5.5 * math.exp(-s / 200) + 1.2]}
        if s % every == 0:
            load = [rng.random() for _ in range(16)]
            r["expert_load"] = [[x / sum(load) for x in load]] * 3 + [[0.0] * 16]
        recs.append(r)
    recs[5]["main_loss"] = "nan"
    recs += [{"event": "eval", "step": s, "time": float(s), "val_loss": 5 * math.exp(-s / 200) + 1.1, "val_bpb": 0.9}
             for s in range(100, steps + 1, 100)]
    return recs


@pytest.mark.slow  # draws every plot of a 5,000-step log: ~3 s
def test_plots_of_long_runs_and_sparse_expert_loads():
    import io

    from PIL import Image

    recs = _long_log(2000, every=100)
    grpo = [{"event": "train", "step": s, "reward": s / 300, "reward_std": 0.2, "reward_accuracy": s / 330,
             "reward_format": 0.9, "completion_len": 40 + s, "completion_len_max": 128, "truncated": 0.1,
             "completion_len_right": 45 + s, "completion_len_wrong": 30 + s, "strategy_direct": 1 - s / 300,
             "strategy_worked": s / 300}
            for s in range(1, 301)] + [{"event": "eval", "step": 100, "val_accuracy": 0.4}]
    pngs = {"loss": plots.loss_curves({"pretrain": recs, "sft": recs[:300]}),
            "reward": plots.grpo_rewards(grpo), "length": plots.grpo_lengths(grpo, 128),
            "strategies": plots.grpo_strategies(grpo),
            "load": plots.expert_load(recs, ["layer 1 (MoE)", "layer 2 (MoE)", "layer 3 (MoE)", "MTP module 1"], "t")}
    for name, png in pngs.items():
        assert png is not None, name
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert im.size[0] >= 800, name
    assert plots.expert_load(recs, None, "t") is not None
    # nothing to draw: None, never an exception
    assert plots.loss_curves({"pretrain": [{"event": "start", "step": 0}]}) is None
    assert plots.grpo_rewards([]) is None and plots.grpo_lengths([], None) is None and plots.grpo_strategies([]) is None
    assert plots.expert_load([{"event": "train", "step": 1, "expert_load": [[0.0, 0.0]]}], None, "t") is None
    ragged = [{"event": "train", "step": 1, "expert_load": [[0.5, 0.5], None]}]
    assert plots.expert_load(ragged, None, "t") is not None


def test_results_with_problems_render_reasoning_safely(run, tmp_path, capsys):
    """evaluate_tasks' own results (as the speedrun saves them, with keep_completions): the reasoning folds into a
    details block, markdown in a prompt stays literal, backticks in an answer stay code."""
    R = _copy(run, tmp_path / "run", ["pretrain"])
    rows = [{"task": "arithmetic", "problems": 2, "samples": 1, "accuracy": 0.5, "format_rate": 1.0}]
    problems = [
        {"id": "a", "task": "arithmetic", "difficulty": 2, "prompt": "What is 3 * 4 * 5?", "reference": "60",
         "samples": [{"completion": "<think>3*4=12\n12*5=60\n```</think>60<|end|>", "answer": "60", "correct": True,
                      "format": True, "finish_reason": "stop", "tokens": 12}]},
        {"id": "b", "task": "arithmetic", "difficulty": 2, "prompt": "What is <b>7</b> + 1?", "reference": "8",
         "samples": [{"completion": "<think>7+1=9</think>`9`", "answer": "`9`", "correct": False, "format": True,
                      "finish_reason": "stop", "tokens": 9}]}]
    (R / "eval").mkdir()
    (R / "eval" / "pretrain.json").write_text(json.dumps({"format_version": 1, "bpb": {"val_bpb": 1.25}}))
    (R / "eval" / "rl.json").write_text(json.dumps({
        "format_version": 1, "summary": rows[0], "rows": rows, "by_difficulty": [], "problems": problems,
        "settings": {"samples": 1, "k": [1], "temperature": 0.0, "max_new_tokens": 64, "style": "chat"},
        "tokens": {"prompt": 20, "generated": 21}, "seconds": 0.5}))
    rc, _, err = _report(capsys, str(R), "--no-measure")
    assert rc == 0, err
    md = (R / "report.md").read_text()
    answers = md[md.index("## The final model's answers"):]
    assert "After RL (GRPO), on held-out problems (`eval/rl.json`: 1 of 2 right; 2 shown)" in answers
    assert "**Problem:** What is 3 \\* 4 \\* 5?" in answers and "What is \\<b\\>7\\</b\\> + 1?" in answers
    block = "<details><summary>reasoning (&lt;think&gt;): 3 lines</summary>\n\n````\n3*4=12\n12*5=60\n```\n````"
    assert block in answers  # a fence longer than the ``` inside
    assert "**Answer:** `60`, ✅ right; reference `60`" in answers
    assert "**Answer:** `` `9` ``, ❌ wrong; reference `8`" in answers
    assert re.search(r"^\| RL \(GRPO\) \| chat .* \| 50\.0% \|", md, re.M)
    assert "| bits per byte after pretraining (eval/pretrain.json) | 1.2500 |" in md  # `nanoseek eval --data`


def test_expert_balance_says_how_many_tokens_a_window_holds():
    """Windowed MaxVio means little without its sample size: ten GRPO steps hold a quarter of the tokens of
    ten pretraining steps. expert_balance reads the tokens per step from the log's running count."""
    from nanoseek.report.balance import expert_balance

    def log(tokens_per_step):
        return [{"event": "train", "step": s, "tokens": s * tokens_per_step,
                 "expert_load": [[0.25, 0.25, 0.25, 0.25]]} for s in range(1, 41)]

    assert expert_balance(log(2048))["window_tokens"] == 20480
    assert expert_balance(log(500))["window_tokens"] == 5000
    no_count = [{k: v for k, v in r.items() if k != "tokens"} for r in log(500)]
    assert expert_balance(no_count)["window_tokens"] is None
