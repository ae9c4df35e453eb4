"""The torch.compile'd decode step: same tokens as eager decoding, and weights changed in place between
calls (an RL trainer's update) are seen without recompiling stale copies."""

import pytest
import torch

import nanoseek
from nanoseek.config import preset
from nanoseek.engine import Engine, SamplingParams

from conftest import randomize_


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_compiled_decoding_matches_eager_and_follows_weight_updates():
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("tiny", max_position_embeddings=64)).eval()
    randomize_(model)
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
    p = SamplingParams(max_new_tokens=8, temperature=0, logprobs=0)
    eager, compiled = Engine(model), Engine(model, compile=True)
    want = eager.generate(prompts, p)
    got = compiled.generate(prompts, p)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor([t.logprob for t in a.logprobs]),
                                   torch.tensor([t.logprob for t in b.logprobs]), atol=1e-4, rtol=0)
    # an optimizer-style in-place update of every weight: the compiled step must use the new values
    with torch.no_grad():
        for prm in model.parameters():
            prm.mul_(1.5)
    want = eager.generate(prompts, p)
    got = compiled.generate(prompts, p)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor([t.logprob for t in a.logprobs]),
                                   torch.tensor([t.logprob for t in b.logprobs]), atol=1e-4, rtol=0)
