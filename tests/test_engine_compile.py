"""The torch.compile'd decode path: every batch-size bucket gives the tokens and logprobs of eager decoding,
everything compiles at start-up and nothing after (dynamo's counters), weights changed in place between
calls (an RL trainer's update) are used, and speculative decoding's compiled steps agree as well."""

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
def test_compiled_buckets_equal_eager_and_nothing_compiles_after_startup(model):
    eager = Engine(model)
    compiled = Engine(model, compile=True, buckets=(1, 2, 4))
    assert compiled.startup_seconds > 0 and compiled.runner.buckets == (1, 2, 4)
    after_startup = _compiles()
    p = SamplingParams(max_new_tokens=10, temperature=0, logprobs=0)
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7], [5] * 11, [3, 1]]
    for n in (1, 2, 3, 4):  # every bucket; 3 rows run padded to 4
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
    spec = Engine(model, compile=True, speculative=2, buckets=(1,))
    after_startup = _compiles()
    got = spec.generate(prompts, p)
    assert [o.token_ids for o in got] == [o.token_ids for o in want] and got[0].drafted > 0
    torch.testing.assert_close(_logprobs(got), _logprobs(want), atol=1e-4, rtol=0)
    assert _compiles() == after_startup
