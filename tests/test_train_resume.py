"""Kill a training process with SIGKILL after a checkpoint, resume it, and get the very same run."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from safetensors.torch import load_file

from nanoseek.train.log import read_log

from train_helpers import build_data, nanoseek_cmd, run, subprocess_env, train_records

STEPS = 20  # checkpoints every 5: a kill lands after the first, the resume crosses three more and an eval


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("resume_data"))


def _args(data, out, *extra):
    # bf16 autocast, MoE with bias updates, MTP, balance loss, grad accumulation, Muon: everything that carries
    # state across steps is in play.
    return nanoseek_cmd("pretrain", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", str(STEPS),
                        "--batch-size", "2", "--grad-accum", "2", "--seq-len", "32", "--warmup-steps", "3",
                        "--optimizer", "muon", "--checkpoint-every", "5", "--eval-every", "10", "--eval-batches", "1",
                        "--aux-loss-alpha", "0.01", "--peak-flops", "1e12", *extra)


def _kill_after_checkpoint(cmd, log_path, timeout=180) -> int:
    """Start cmd, wait until it has written a checkpoint and trained at least one step past it, SIGKILL it."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"training finished (rc {proc.returncode}) before it could be killed")
            recs = read_log(log_path) if log_path.exists() else []
            ckpts = [r["step"] for r in recs if r["event"] == "checkpoint"]
            if ckpts and any(r["event"] == "train" and r["step"] > ckpts[0] + 1 for r in recs):
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return ckpts[-1]
            time.sleep(0.01)
        pytest.fail("no checkpoint appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resume_after_sigkill_is_bit_for_bit(data, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run(_args(data, full))
    assert r.returncode == 0, r.stderr[-2000:]

    _kill_after_checkpoint(_args(data, killed), killed / "log.jsonl")
    steps_before = [x["step"] for x in train_records(killed)]
    assert steps_before[-1] < STEPS  # it really died mid-run
    r = run(_args(data, killed, "--resume"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from step_" in r.stdout

    a, b = train_records(full), train_records(killed)
    assert [x["step"] for x in b] == list(range(1, STEPS + 1))  # records past the checkpoint were replaced
    for key in ("loss", "main_loss", "mtp_losses", "balance_loss", "grad_norm", "lr", "router_bias_min",
                "router_bias_max", "expert_maxvio"):
        assert [x[key] for x in b] == [x[key] for x in a], key  # exactly equal, not approximately
    evals = lambda recs: [(x["step"], x["val_loss"], x["val_bpb"]) for x in recs if x["event"] == "eval"]
    assert evals(read_log(killed)) == evals(read_log(full))
    last = f"checkpoints/step_{STEPS:07d}/model.safetensors"
    wa, wb = load_file(str(full / last)), load_file(str(killed / last))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), k
