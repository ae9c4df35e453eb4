"""What `nanoseek pretrain` checks and says: tokenizer fingerprints on every path that combines a model with token
data, an old log kept aside, a small validation split, the warm-up default, progress-bar names, --model values,
the divergence advice, non-finite settings and weights, and one writer per run folder. (The section headers name
the issues each check came from.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nanoseek.cli import main as cli
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.log import read_log

from cli_helpers import cli_error
from train_helpers import REPO, build_data, nanoseek_cmd, subprocess_env, train_records

TINY = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--eval-batches", "1", "--eval-every", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return build_data(tmp_path_factory.mktemp("a"))


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """Token data made by another 512-token tokenizer (trained on other text): same vocab size, other ids."""
    root = tmp_path_factory.mktemp("b")
    text = "\n".join(p.read_text() for p in sorted((REPO / "tests").glob("*.py")))
    (root / "corpus").mkdir()
    for i in range(30):
        (root / "corpus" / f"t{i:02d}.txt").write_text(text[i * 3000:(i + 1) * 3000])
    assert cli(["tokenizer", "train", "--input", str(root / "corpus"), "--vocab-size", "512", "--output",
                str(root / "tok")]) == 0
    assert cli(["data", "prepare", "--input", str(root / "corpus"), "--tokenizer", str(root / "tok"), "--output",
                str(root / "data"), "--val-docs", "2"]) == 0
    return root / "data"


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "a"
    assert cli(["pretrain", "--data", str(data), "--out", str(run), *TINY, "--steps", "2"]) == 0
    return run


# ---- 8.1: tokenizer fingerprints ------------------------------------------------------------------------------
def test_a_model_and_data_of_different_tokenizers_are_refused(data, other, run_a, tmp_path, capsys):
    ckpt = run_a / "checkpoints" / "step_0000002"
    fa, fb = Tokenizer.load(data / "tokenizer").fingerprint(), Tokenizer.load(other / "tokenizer").fingerprint()
    assert fa != fb and Tokenizer.load(other / "tokenizer").vocab_size == 512
    # --init-from: the checkpoint's own tokenizer files against the data's
    cli_error(capsys, ["pretrain", "--data", str(other), "--out", str(tmp_path / "x"), "--init-from", str(ckpt),
                       *TINY, "--steps", "1"], "tokenizer mismatch", fa, fb, str(ckpt / "tokenizer.json"),
              str(other / "tokenizer"))
    assert not (tmp_path / "x" / "checkpoints").exists()
    # --resume: the run's latest checkpoint against the data given now
    cli_error(capsys, ["pretrain", "--data", str(other), "--out", str(run_a), "--resume", "--steps", "3"],
              "tokenizer mismatch", fa, fb)
    assert [r["step"] for r in train_records(run_a)] == [1, 2]
    # a model directory without tokenizer files cannot be checked: refused, saying how to fix it
    bare = shutil.copytree(ckpt, tmp_path / "bare")
    for f in bare.glob("tokenizer*.json"):
        f.unlink()
    cli_error(capsys, ["pretrain", "--data", str(data), "--out", str(tmp_path / "y"), "--init-from", str(bare), *TINY,
                       "--steps", "1"], f"{bare} has no tokenizer.json", "copy")
    # the loader: a data directory whose tokenizer/ was swapped for another one
    swapped = shutil.copytree(data, tmp_path / "swapped")
    shutil.rmtree(swapped / "tokenizer")
    shutil.copytree(other / "tokenizer", swapped / "tokenizer")
    cli_error(capsys, ["pretrain", "--data", str(swapped), "--out", str(tmp_path / "z"), *TINY, "--steps", "1"],
              "tokenizer mismatch", fa, fb, str(swapped / "manifest.json"))
    # the matching pair still trains
    assert cli(["pretrain", "--data", str(data), "--out", str(tmp_path / "ok"), "--init-from", str(ckpt), *TINY,
                "--steps", "1"]) == 0


# ---- 8.5: an old log is kept; 8.8: warm-up; 8.9: the progress bar's names; 8.10: --model values -------------
def test_new_run_keeps_an_old_log_and_defaults_fit_a_short_run(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    old = '{"event": "start", "step": 0, "time": 1}\n{"event": "train", "step": 1, "time": 2, "loss": 9.0}\n'
    (run / "log.jsonl").write_text(old)  # a run killed before its first checkpoint
    capsys.readouterr()
    assert cli(["pretrain", "--data", str(data), "--out", str(run), *TINY, "--steps", "5"]) == 0  # no --warmup-steps
    out, err = capsys.readouterr()
    assert (run / "log.1.jsonl").read_text() == old
    assert f"kept it as {run / 'log.1.jsonl'}" in out
    assert "warm-up 1 steps (default" in out
    recs = train_records(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and read_log(run)[0]["event"] == "start"
    # the bar's figures carry the log's names and values: loss is the total, main_loss the next-token loss
    bar = err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"loss={recs[-1]['loss']:.4f}" in bar and f"main_loss={recs[-1]['main_loss']:.4f}" in bar
    assert "tokens_per_s=" in bar and "tok/s" not in bar and "tok_s" not in bar
    # shortening or lengthening on resume keeps a valid schedule; an explicit warm-up longer than the run is refused
    assert cli(["pretrain", "--data", str(data), "--out", str(run), "--resume", "--steps", "6"]) == 0
    cli_error(capsys, ["pretrain", "--data", str(data), "--out", str(tmp_path / "r2"), *TINY, "--steps", "5",
                       "--warmup-steps", "20"], "--warmup-steps (20) must not exceed --steps (5)")
    for bad in ("rope_theta=nan", "rope_theta=NaN", "rms_norm_eps=abc", "rope_scaling=yarn"):
        key = bad.split("=")[0]
        cli_error(capsys, ["pretrain", "--data", str(data), "--out", str(tmp_path / "r3"), *TINY, "--steps", "1",
                           "--model", bad], f"field '{key}'")


# ---- 8.6: a validation split smaller than one batch is evaluated on what there is ------------------------------
def test_small_validation_splits_are_evaluated_on_what_there_is(data, tmp_path, capsys):
    def prepare(out: Path, *val: str) -> int:
        assert cli(["data", "prepare", "--input", str(data.parent / "corpus"), "--tokenizer", str(data / "tokenizer"),
                    "--output", str(out), *val]) == 0
        return json.loads((out / "manifest.json").read_text())["splits"]["val"]["tokens"]

    n = (prepare(tmp_path / "d1", "--val-docs", "1") - 1) // 512
    assert 0 < n < 8  # fewer windows of 512 than one default batch of 8: the loader refused this before
    capsys.readouterr()
    assert cli(["pretrain", "--data", str(tmp_path / "d1"), "--out", str(tmp_path / "r"), "--preset", "tiny",
                "--seq-len", "512", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert f"each evaluation reads 1 batch(es) of {n} x 512 tokens (all the validation split holds" in out
    assert [r["step"] for r in read_log(tmp_path / "r") if r["event"] == "eval"] == [1]
    # no validation split at all: training runs without evaluation and says so
    assert prepare(tmp_path / "d0", "--val-fraction", "0") == 0
    capsys.readouterr()
    assert cli(["pretrain", "--data", str(tmp_path / "d0"), "--out", str(tmp_path / "r0"), *TINY, "--steps",
                "1"]) == 0
    out = capsys.readouterr().out
    assert "validation split: 0 tokens" in out and "no evaluation" in out
    assert not [r for r in read_log(tmp_path / "r0") if r["event"] == "eval"]


# ---- 8.13: divergence advice -------------------------------------------------------------------------------------
def test_divergence_names_what_is_known_and_the_checkpoint_to_resume_from(data, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["pretrain", "--data", str(data), "--out", str(run)]
    assert cli([*common, *TINY, "--steps", "4", "--checkpoint-every", "2", "--dtype", "float32"]) == 0
    sound = run / "checkpoints" / "step_0000004"
    # --lr 1e6 from step 5: step 5 still runs on sound weights, its update wrecks them, step 6 is NaN
    err = cli_error(capsys, [*common, "--resume", "--steps", "8", "--lr", "1e6"], "training diverged at step 6")
    assert f"The last checkpoint, {sound}, is untouched: resume from it with --resume and a lower --lr" in err
    # the same with a checkpoint after every step: step 5's checkpoint holds the wrecked weights
    err = cli_error(capsys, [*common, "--resume", "--steps", "8", "--lr", "1e6", "--checkpoint-every", "1"],
                    "training diverged at step 6", "step_0000005 (untouched), holds the weights this step ran on (its "
                    "largest |weight| is", "diverges again, whatever the --lr",
                    f"Resume from an earlier checkpoint, {sound}",
                    f"write 'step_0000004' into {run / 'checkpoints' / 'latest'}")
    assert re.search(r"largest \|weight\| is \d[\d.]*e\+0[5-9]", err)  # ~lr-sized weights, not ~0.1
    # following the advice works
    (run / "checkpoints" / "latest").write_text("step_0000004\n")
    assert cli([*common, "--resume", "--steps", "6", "--lr", "3e-3"]) == 0
    assert [r["step"] for r in train_records(run)] == [1, 2, 3, 4, 5, 6]


# ---- issue 22.4: non-finite settings, weights and checkpoints ----------------------------------------------------
@pytest.mark.parametrize("flag", ["--lr=inf", "--lr=nan", "--adam-eps=0", "--adam-eps=-1e-8", "--weight-decay=inf",
                                  "--grad-clip=nan", "--mtp-weight=-inf", "--peak-flops=inf", "--min-lr-ratio=nan"])
def test_settings_that_are_not_finite_numbers_are_refused(data, tmp_path, capsys, flag):
    cli_error(capsys, ["pretrain", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, "--steps", "1", flag],
              flag.split("=")[0])
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_an_update_that_blows_up_the_weights_writes_no_checkpoint(data, tmp_path, capsys):
    """Step 3's loss and gradient norm are finite (its weights are step 2's), but its update overflows float32
    (--lr 1e40): the run stops as diverged instead of writing NaN weights, and the last checkpoint stays."""
    run = tmp_path / "run"
    common = ["pretrain", "--data", str(data), "--out", str(run), *TINY, "--dtype", "float32"]
    assert cli([*common, "--steps", "2", "--checkpoint-every", "1"]) == 0
    err = cli_error(capsys, [*common, "--resume", "--steps", "3", "--lr", "1e40"], "training diverged at step 3",
                    "NaN or inf in the weights", f"{run / 'checkpoints' / 'step_0000002'}, is untouched")
    assert err.strip().splitlines()[-1].startswith("nanoseek pretrain: error: training diverged at step 3")
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert not (run / "checkpoints" / "step_0000003").exists()
    assert read_log(run)[-1]["event"] == "diverged" and read_log(run)[-1]["step"] == 3
    assert train_records(run)[-1]["step"] == 3 and train_records(run)[-1]["loss"] < 100


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_checkpoint_holding_non_finite_weights_is_refused_naming_the_tensor(data, run_a, tmp_path, capsys, bad):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    ckpt = run / "checkpoints" / "step_0000002"
    weights = load_file(str(ckpt / "model.safetensors"))
    name = "model.layers.1.self_attn.o_proj.weight"
    weights[name][3, 5] = bad
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    for argv in (["pretrain", "--data", str(data), "--out", str(run), "--resume", "--steps", "3"],
                 ["pretrain", "--data", str(data), "--out", str(tmp_path / "b"), *TINY[2:], "--init-from", str(ckpt)],
                 ["generate", "--checkpoint", str(run), "--prompt", "x", "--max-tokens", "1"]):
        cli_error(capsys, argv, f"tensor {name} holds NaN or inf values")


# ---- issue 22.3: one writer per run folder -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_folder_takes_one_writer_at_a_time(data, tmp_path, capsys):
    """While one process trains into a folder, every command that would write there is refused at once, naming
    that process; the lock goes with the process, also when it is SIGKILLed."""
    run = tmp_path / "run"
    first = subprocess.Popen(nanoseek_cmd("pretrain", "--data", str(data), "--out", str(run), *TINY, "--steps",
                                          "100000", "--checkpoint-every", "0"),
                             env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "log.jsonl").exists() and train_records(run)):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.05)
        for argv in (["pretrain", "--data", str(data), "--out", str(run), *TINY, "--steps", "2"],
                     ["pretrain", "--data", str(data), "--out", str(run), "--resume"],
                     ["sft", "--checkpoint", str(run), "--data", str(tmp_path / "chats.jsonl"), "--out", str(run)],
                     ["rl", "--checkpoint", str(run), "--task", "arithmetic", "--out", str(run)],
                     ["speedrun", str(run), "--preset", "smoke"]):
            cli_error(capsys, argv, f"{run} is in use by another nanoseek process (pid {first.pid})")
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    assert cli(["pretrain", "--data", str(data), "--out", str(run), *TINY, "--steps", "2"]) == 0


@pytest.mark.slow
def test_two_runs_started_together_into_one_folder_one_is_refused(data, tmp_path):
    run = tmp_path / "run"
    cmd = nanoseek_cmd("pretrain", "--data", str(data), "--out", str(run), *TINY, "--steps", "6")
    procs = [subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = sorted((p.wait(timeout=240), p.stderr.read()) for p in procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [rc for rc, _ in results] == [0, 2], results
    assert "in use by another nanoseek process" in results[1][1] or "already holds a training run" in results[1][1]
    assert [r["step"] for r in train_records(run)] == list(range(1, 7))  # one run's log, whole
