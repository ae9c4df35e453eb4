"""Kill a training process with SIGKILL after a checkpoint, resume it, and get the very same run."""

from __future__ import annotations

import pytest

from train_helpers import assert_resumes_bit_for_bit, build_data, dying_after_log, nanoseek_cmd

STEPS = 20  # checkpoints every 5: the kill lands two steps past the first, the resume crosses three more and an eval


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


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_for_bit(data, tmp_path):
    _, _, stdout = assert_resumes_bit_for_bit(
        lambda out, *x: _args(data, out, *x), tmp_path, STEPS, dying_after_log(tmp_path, "train", 7),
        train_keys=("loss", "main_loss", "mtp_losses", "balance_loss", "grad_norm", "lr", "router_bias_min",
                    "router_bias_max", "expert_maxvio"),
        eval_keys=("val_loss", "val_bpb"))
    assert "resumed from step_0000005" in stdout
