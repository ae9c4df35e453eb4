"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 give the single-process run with the same global batch.

Tolerance: the data are identical (the loader splits each global batch across ranks), so only the order of
fp32 sums differs (gradient all-reduce / reduce-scatter vs one batch). With AdamW, per-step losses agree to
1e-5 relative and gradient norms to 1e-4. Muon orthogonalizes in bf16 (3 significant digits), which turns
that summation noise into update differences of a few parts per thousand: there losses agree to 1e-4 and
gradient norms to 1e-3 over the 4 steps (measured: 2e-5 and 2.5e-4). Weight updates between the step-2 and
step-4 checkpoints: relative L2 distance below 5e-3 (AdamW) and 6e-2 (Muon).
"""

from __future__ import annotations

import shutil
import sys

import pytest
from safetensors.torch import load_file

import nanoseek
from nanoseek.train.log import read_log

from train_helpers import build_data, run, train_records

STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("dist_data"))


def _args(data, out, batch, optimizer, *extra):
    return ["pretrain", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", str(STEPS),
            "--batch-size", str(batch), "--grad-accum", "2", "--seq-len", "32", "--warmup-steps", "1",
            "--dtype", "float32", "--optimizer", optimizer, "--eval-every", "2", "--eval-batches", "2",
            "--checkpoint-every", "2", "--peak-flops", "1e12", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("parallel,optimizer", [("ddp", "adamw"), ("fsdp", "muon")])
def test_torchrun_two_processes_match_one(data, tmp_path, parallel, optimizer):
    single, multi = tmp_path / "single", tmp_path / parallel
    r = run([sys.executable, "-m", "nanoseek.cli", *_args(data, single, 4, optimizer)])
    assert r.returncode == 0, r.stderr[-3000:]
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             "-m", "nanoseek.cli", *_args(data, multi, 2, optimizer, "--parallel", parallel)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("training log:") == 1  # only rank 0 talks

    start = read_log(multi)[0]
    assert start["event"] == "start" and start["world_size"] == 2 and start["parallel"] == parallel
    assert (start["sharded_params"] > 0) == (parallel == "fsdp")

    a, b = train_records(single), train_records(multi)
    assert [x["step"] for x in b] == list(range(1, STEPS + 1))
    tol = 1e-5 if optimizer == "adamw" else 1e-4
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=tol)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=10 * tol)
    # step 1 starts from identical weights: identical routing, so the logged loads (counts all-reduced over
    # ranks) and the bias update (from all-reduced counts) are the single process's exactly. Later a near-tie
    # may route one token differently.
    assert b[0]["expert_maxvio"] == a[0]["expert_maxvio"]
    assert (b[0]["router_bias_min"], b[0]["router_bias_max"]) == (a[0]["router_bias_min"], a[0]["router_bias_max"])
    ea = [(e["step"], e["val_loss"]) for e in read_log(single) if e["event"] == "eval"]
    eb = [(e["step"], e["val_loss"]) for e in read_log(multi) if e["event"] == "eval"]
    assert [s for s, _ in eb] == [2, 4] and [v for _, v in eb] == pytest.approx([v for _, v in ea], rel=tol)

    # rank 0 wrote whole (gathered) checkpoints that load as ordinary models. Compare what the two runs' optimizers
    # did between the step-2 and step-4 checkpoints: relative L2 distance of the weight updates (the router biases
    # move in +-gamma steps and are checked above). Not the distance of the weights themselves: Adam's first steps
    # are ~lr*sign(g), so an element whose gradient sums to ~0 may move +lr in one run and -lr in the other from
    # summation order alone (seen: one embedding element, 3e-4), which says nothing about the parallel code.
    # Measured: 3.6e-4 (AdamW), 1.9e-2 (Muon, bf16 Newton-Schulz); training on half the global batch: 0.92.
    w = {(run_dir, step): load_file(str(run_dir / f"checkpoints/step_{step:07d}/model.safetensors"))
         for run_dir in (single, multi) for step in (2, STEPS)}
    assert w[single, STEPS].keys() == w[multi, STEPS].keys()
    keys = [k for k in w[single, STEPS] if not k.endswith("e_score_correction_bias")]
    upd = {r: {k: w[r, STEPS][k] - w[r, 2][k] for k in keys} for r in (single, multi)}
    norm = lambda f: sum((f(k) ** 2).sum() for k in keys) ** 0.5  # noqa: E731
    dist = norm(lambda k: upd[single][k] - upd[multi][k]) / norm(lambda k: upd[single][k])
    assert dist < (5e-3 if optimizer == "adamw" else 6e-2), dist
    last = f"checkpoints/step_{STEPS:07d}"
    nanoseek.load_model(multi / last)


@pytest.mark.slow
def test_single_process_checkpoint_resumes_under_fsdp(data, tmp_path):
    """A 1-process checkpoint continues under torchrun FSDP2 (whole weights and name-keyed optimizer state are
    sharded on load; the loader's position counts windows, so the global batch continues where it stopped)
    like the 1-process continuation, within the tolerance above."""
    one = tmp_path / "one"
    r = run([sys.executable, "-m", "nanoseek.cli", *_args(data, one, 4, "adamw")])
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    two.mkdir()
    shutil.copytree(one / "checkpoints", two / "checkpoints")
    shutil.copy(one / "log.jsonl", two / "log.jsonl")
    r = run([sys.executable, "-m", "nanoseek.cli", "pretrain", "--data", str(data), "--out", str(one), "--resume",
             "--steps", "6"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
             "nanoseek.cli", "pretrain", "--data", str(data), "--out", str(two), "--resume", "--steps", "6",
             "--parallel", "fsdp", "--batch-size", "2"])  # same global batch: 2 ranks x 2
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not bit for bit" in r.stdout
    a, b = train_records(one), train_records(two)
    assert [x["step"] for x in b] == [1, 2, 3, 4, 5, 6]
    assert b[:4] == a[:4]  # the log before the checkpoint is kept as it was
    for x, y in zip(a[4:], b[4:], strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["tokens"] == x["tokens"]
