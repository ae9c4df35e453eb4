"""The torch.compile'd decode path (plain and speculative steps): the same tokens and logprobs as eager
decoding, and weights changed in place between calls (an RL trainer's update) are used, not stale copies."""

import pytest
import torch

import nanoseek
from nanoseek.config import preset
from nanoseek.engine import Engine, SamplingParams

from conftest import randomize_


def _logprobs(out):
    return torch.tensor([t.logprob for t in out.logprobs])


@pytest.mark.slow
def test_compiled_decoding_matches_eager_and_follows_weight_updates():
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("tiny", max_position_embeddings=64, num_hidden_layers=2)).eval()
    randomize_(model)
    prompt = [1, 2, 3, 4, 5]
    p = SamplingParams(max_new_tokens=10, temperature=0, logprobs=0)
    eager, compiled = Engine(model), Engine(model, compile=True)
    want, got = eager.generate(prompt, p), compiled.generate(prompt, p)
    assert got.token_ids == want.token_ids
    torch.testing.assert_close(_logprobs(got), _logprobs(want), atol=1e-4, rtol=0)
    spec = compiled.generate(prompt, p, speculative=2)  # compiled verification and MTP steps
    assert spec.token_ids == want.token_ids and spec.drafted > 0
    torch.testing.assert_close(_logprobs(spec), _logprobs(want), atol=1e-4, rtol=0)
    # an optimizer-style in-place update of every weight: the compiled step must use the new values
    with torch.no_grad():
        for prm in model.parameters():
            prm.mul_(1.5)
    want, got = eager.generate(prompt, p), compiled.generate(prompt, p)
    assert got.token_ids == want.token_ids
    torch.testing.assert_close(_logprobs(got), _logprobs(want), atol=1e-4, rtol=0)
