"""The torch.compile'd decode path: every batch size gives the tokens and logprobs of eager decoding,
everything compiles at start-up and nothing after (dynamo's counters), weights changed in place between
calls (an RL trainer's update) are used, speculative decoding's compiled steps agree as well, and what was
compiled is found again in the on-disk cache."""

import pytest
import torch

import nanoseek
from nanoseek.config import preset
from nanoseek.engine import Engine, SamplingParams

from conftest import randomize_


def _logprobs(outs):
    return torch.tensor([t.logprob for o in outs for t in o.logprobs])


def _compiles():
    from torch._dynamo.utils import counters  # here, not at the top: importing dynamo costs the quick subset ~2 s

    return counters["stats"]["unique_graphs"], counters["frames"]["total"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = nanoseek.DeepSeekV3(preset("tiny", max_position_embeddings=64, num_hidden_layers=2)).eval()
    randomize_(m)
    return m


@pytest.mark.slow
def test_compiled_steps_equal_eager_and_nothing_compiles_after_startup(model):
    from torch._dynamo.utils import counters

    eager = Engine(model)
    aot = dict(counters["aot_autograd"])
    compiled = Engine(model, compile=True)
    assert compiled.startup_seconds > 0 and compiled.runner.warm_sizes == (1, 2)
    # two graphs traced once each (no restarted analysis), both fit for AOTAutograd's on-disk cache: what makes
    # a second start quick
    assert counters["aot_autograd"]["total"] - aot.get("total", 0) == 2
    assert counters["aot_autograd"].get("autograd_cache_bypass", 0) == aot.get("autograd_cache_bypass", 0)
    after_startup = _compiles()
    p = SamplingParams(max_new_tokens=10, temperature=0, logprobs=0)
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7], [5] * 11, [3, 1]]
    for n in (1, 2, 3, 4):  # 1 has a graph of its own; 2, 3 and 4 rows share one
        want, got = eager.generate(prompts[:n], p), compiled.generate(prompts[:n], p)
        assert [o.token_ids for o in got] == [o.token_ids for o in want]
        torch.testing.assert_close(_logprobs(got), _logprobs(want), atol=1e-4, rtol=0)
    # an optimizer-style in-place update of every weight: the compiled step must use the new values
    with torch.no_grad():
        for prm in model.parameters():
            prm.mul_(1.5)
    want, got = eager.generate(prompts, p), compiled.generate(prompts, p)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    torch.testing.assert_close(_logprobs(got), _logprobs(want), atol=1e-4, rtol=0)
    assert _compiles() == after_startup  # every batch size and context length ran on start-up's graphs


@pytest.mark.slow
def test_compiled_speculative_steps_equal_eager(model):
    p = SamplingParams(max_new_tokens=10, temperature=0, logprobs=0)
    prompts = [[1, 2, 3, 4, 5]]
    want = Engine(model).generate(prompts, p)
    spec = Engine(model, compile=True, speculative=2, max_batch=1)
    after_startup = _compiles()
    got = spec.generate(prompts, p)
    assert [o.token_ids for o in got] == [o.token_ids for o in want] and got[0].drafted > 0
    torch.testing.assert_close(_logprobs(got), _logprobs(want), atol=1e-4, rtol=0)
    assert _compiles() == after_startup


def test_the_compile_cache_marker_says_what_a_warm_up_compiled(model, tmp_path, monkeypatch):
    """Engine.compile_is_warm answers from a marker the warm-up writes into the compile folder; a missing,
    corrupt or narrower marker reads as cold (merely a slow start, never a wrong one)."""
    from nanoseek.engine import compile_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert compile_cache.compile_dir() == tmp_path / "inductor"  # the user's choice wins
    cfg = model.config
    key = compile_cache.warm_key(cfg, torch.float32, "cpu", 1)
    assert not Engine.compile_is_warm(cfg, torch.float32, "cpu", speculative="auto")
    compile_cache.mark_warm(key, (1,), 3.0)
    assert Engine.compile_is_warm(cfg, torch.float32, "cpu", speculative="auto", max_batch=1)
    assert not Engine.compile_is_warm(cfg, torch.float32, "cpu", speculative="auto")  # batch 2+ not compiled
    assert not Engine.compile_is_warm(cfg, torch.bfloat16, "cpu", speculative="auto", max_batch=1)
    assert not Engine.compile_is_warm(cfg, torch.float32, "cpu", speculative=0, max_batch=1)
    compile_cache.mark_warm(key, (1, 2), 3.0)
    assert Engine.compile_is_warm(cfg, torch.float32, "cpu", speculative="auto")
    (tmp_path / "inductor" / "nanoseek-warm" / f"{key}.json").write_text("{not json")
    assert not Engine.compile_is_warm(cfg, torch.float32, "cpu", speculative="auto", max_batch=1)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "file" / "inductor"))  # cannot be written
    assert compile_cache.mark_warm(key, (1,), 3.0) is False  # a start that compiled is not failed for its marker


def test_the_compile_folder_follows_the_usual_conventions(monkeypatch, tmp_path):
    from nanoseek.engine import compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("NANOSEEK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.compile_dir() == tmp_path / "xdg" / "nanoseek" / "compile"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")  # compile_dir points torch at it
    monkeypatch.setenv("NANOSEEK_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache.compile_dir() == tmp_path / "mine" / "compile"


DECODE_ONCE = """
import sys, torch
import nanoseek
from nanoseek.config import preset
from nanoseek.engine import Engine, SamplingParams
torch.manual_seed(0)
model = nanoseek.DeepSeekV3(preset("tiny", num_hidden_layers=1, first_k_dense_replace=0, num_nextn_predict_layers=0))
engine = Engine(model.eval(), compile=True, max_batch=1)
print(engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=6, temperature=0))[0].token_ids)
"""


@pytest.mark.slow  # three processes that compile a one-layer model: ~1 minute
def test_a_damaged_compile_cache_is_rebuilt_not_trusted(tmp_path):
    """Kernels written by one process are found by the next; kernel files damaged on disk make torch's compile
    fail, and the engine clears its compile folder and compiles afresh instead of failing or using them."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env.update(NANOSEEK_CACHE_DIR=str(tmp_path), OMP_NUM_THREADS="1")

    def run():
        p = subprocess.run([sys.executable, "-c", DECODE_ONCE], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout.strip(), p.stderr

    first, _ = run()
    kernels = list((tmp_path / "compile").rglob("*.so"))
    assert kernels and list((tmp_path / "compile").glob("fxgraph/*"))
    for k in kernels:
        k.write_bytes(b"not a shared object")
    again, err = run()
    assert again == first and "cleared the compile cache" in err, err[-3000:]
    assert run()[0] == first  # and the rebuilt cache serves the next start
