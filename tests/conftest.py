import atexit
import os
import shutil
import tempfile

import torch
import pytest

# torch.compile's cache (inductor, triton) in a folder of this test run's own: two runs sharing the default
# folder wait on each other's file locks (once for 14 minutes). Subprocesses (torchrun tests) inherit it.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="nanoseek-test-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "triton"))

from nanoseek.config import preset


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "smoke_run" in item.fixturenames:  # a whole speedrun, ~10 s at the first such test
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and this machine has none; run the suite on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread, and on a shared 2-core machine a second OpenMP thread stalls
    whenever another process holds the other core: every op then waits out a time slice."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _one_matmul_peak():
    """A training run given no --peak-flops measures this CPU's matmul peak for its MFU (a warm-up and half a second
    of 2048 x 2048 matmuls): the in-process runs of this session measure it once per device and dtype and share it.
    (Processes the tests start measure their own.)"""
    import functools

    from nanoseek import cost

    real = getattr(cost, "measure_matmul_peak", None)
    if real is not None:
        cost.measure_matmul_peak = functools.cache(real)
    yield
    if real is not None:
        cost.measure_matmul_peak = real


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def randomize_(model, bias_std: float = 0.5) -> None:
    """Make a freshly initialized model a harder test subject: random norm weights, attention biases and
    non-zero (also negative) router correction biases, so no parameter sits at a trivial value."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.normal_(0, 0.05)
        for r in model.routers():
            r.e_score_correction_bias.normal_(0, bias_std)


@pytest.fixture
def tiny_config():
    return preset("tiny")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """`nanoseek speedrun --preset smoke` once per test session: (its run folder, its stdout). The whole pipeline
    for real (tasks, tokenizer, tokens, pretrain, sft, rl, the evaluations and the report), shared by the speedrun's
    tests and the report card's. Tests that change the folder work on a copy (test_speedrun's rerun excepted).
    It runs in this process, as the speedrun runs its own stages: a new process would import torch again."""
    import contextlib
    import io

    from nanoseek.cli import main

    out = tmp_path_factory.mktemp("speedrun") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["speedrun", str(out), "--preset", "smoke"])
    assert rc == 0, stdout.getvalue()[-3000:]
    return out, stdout.getvalue()
