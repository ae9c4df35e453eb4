"""The latent-cache path: cached decoding reproduces the full forward, and the cache holds only the latent."""

import pytest
import torch

import nanoseek
from nanoseek.config import preset, yarn
from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.cache import LatentPool
from nanoseek.model.inference import InferenceModel

from conftest import randomize_


CONFIGS = {
    "q_lora": dict(),
    "no_q_lora": dict(q_lora_rank=None),
    "yarn": dict(rope_scaling=yarn(4, 32), max_position_embeddings=128),
    "biases": dict(attention_bias=True),  # q_a / kv_a biases go through the fused decode projection
    "biases_no_q_lora": dict(attention_bias=True, q_lora_rank=None),
}


def _model(**overrides):
    m = nanoseek.DeepSeekV3(preset("tiny", **overrides)).eval()
    randomize_(m)
    return m


# Logit tolerances of the cached path against a full forward in the same dtype, on logits of magnitude up to
# ~0.73. fp32: summation order only (measured max 3e-7 over 3 seeds and every config). bf16: the two paths
# round different intermediates to bf16 (absorbed vs expanded attention, fused vs separate projections):
# measured max 3.9e-3 (main model) and 2.0e-3 (MTP) on CPU; the tolerance is 5x that.
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
DEVICES = [("cpu", torch.float32), ("cpu", torch.bfloat16),
           pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda, id="cuda-bf16")]


@pytest.mark.parametrize("device,dtype", DEVICES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_steps_match_full_forward_at_every_step(name, device, dtype):
    """Prefill a batch of different-length prompts (right-padded), then decode one token per step, then a
    multi-token absorbed step (speculative verification) and a chunked prefill continuation (expanded path
    over existing cache). At every step every row's logits equal a full forward over its whole sequence.
    In bf16 the packed weights keep the parameters' layout (F.linear) and the experts their own; on CUDA the
    generation path takes the grouped GEMM for experts."""
    model = _model(**CONFIGS[name]).to(device, dtype)
    cfg = model.config
    lens = [5, 11, 2]
    B, total = len(lens), 40
    seqs = torch.randint(0, cfg.vocab_size, (B, total)).to(device)
    kv = LatentPool(cfg, B, 48, dtype=dtype, device=device).layers
    fast = InferenceModel(model)
    tol = TOL[dtype]

    def check(h, starts, n):  # rows' hidden for positions starts[b] .. starts[b] + n - 1
        with torch.no_grad():
            for b in range(B):
                end = starts[b] + n
                ref = model(seqs[b:b + 1, :end])[0, starts[b]:end]
                torch.testing.assert_close(fast.logits(h[b, :n]), ref, atol=tol, rtol=0)

    S = max(lens)
    ids = torch.zeros(B, S, dtype=torch.long, device=device)
    valid = torch.zeros(B, S, dtype=torch.bool, device=device)
    for b, n in enumerate(lens):
        ids[b, :n], valid[b, :n] = seqs[b, :n], True
    h = fast.forward_cached(ids, kv, torch.arange(S, device=device).expand(B, S), valid=valid)
    check(h, [0] * B, 2)  # (every row has at least 2 tokens; the others are checked below)
    for b, n in enumerate(lens):
        with torch.no_grad():
            torch.testing.assert_close(fast.logits(h[b, :n]), model(seqs[b:b + 1, :n])[0], atol=tol, rtol=0)

    cur = list(lens)
    for _ in range(6):  # decode: one token per row, rows at different positions
        step = torch.stack([seqs[b, cur[b]] for b in range(B)]).unsqueeze(1)
        h = fast.forward_cached(step, kv, torch.tensor(cur, device=device).unsqueeze(1))
        check(h, cur, 1)
        cur = [c + 1 for c in cur]
    for n in (3, 12):  # 3 tokens: absorbed multi-token step; 12: expanded over the existing cache
        step = torch.stack([seqs[b, cur[b]:cur[b] + n] for b in range(B)])
        h = fast.forward_cached(step, kv, torch.tensor(cur, device=device).unsqueeze(1) + torch.arange(n, device=device))
        check(h, cur, n)
        cur = [c + n for c in cur]


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_cached_mtp_drafts_equal_the_mtp_forward(device, dtype):
    """The MTP module's generation path (prefill over its own cache, then one position at a time, absorbed)
    gives the draft logits of its training forward: lm_head(shared_head.norm(MTP(h_t, Emb(t_{t+1})))).
    Speculative acceptance tests cannot catch a wrong draft (the verified output is exact whatever the
    draft proposes), so this is where the draft itself is held to the definition."""
    model = _model(num_nextn_predict_layers=1).to(device, dtype)
    cfg = model.config
    T, n_pre = 24, 15
    ids = torch.randint(0, cfg.vocab_size, (2, T), device=device)
    mtp = model.mtp[0]
    with torch.no_grad():  # the definition, as the training forward computes it
        h = model.hidden_states(ids).hidden
        cos, sin = model.rotary(torch.arange(T - 1, device=device), dtype)
        h1, _ = mtp(h[:, :-1], model.model.embed_tokens(ids[:, 1:]), cos, sin)
        want = model.lm_head(mtp.shared_head.norm(h1))  # [2, T-1, V]: draft for token t+2 at position t
    fast = InferenceModel(model)
    kv = LatentPool(cfg, 2, T, dtype=dtype, device=device)
    dkv = LatentPool(cfg, 2, T, layers=1, dtype=dtype, device=device).layers[0]
    pos = torch.arange(T, device=device).expand(2, T)
    hm = fast.forward_cached(ids, kv.layers, pos)  # the main model's hidden, as the engine gets it
    g = fast.forward_mtp_cached(1, hm[:, :n_pre], ids[:, 1:n_pre + 1], dkv, pos[:, :n_pre])  # expanded
    torch.testing.assert_close(fast.logits(g), want[:, :n_pre], atol=TOL[dtype], rtol=0)
    for t in range(n_pre, T - 1):  # one position per step: the absorbed path
        g = fast.forward_mtp_cached(1, hm[:, t:t + 1], ids[:, t + 1:t + 2], dkv, pos[:, t:t + 1])
        torch.testing.assert_close(fast.logits(g)[:, 0], want[:, t], atol=TOL[dtype], rtol=0)


def test_engine_logprobs_equal_full_forward(tiny_config):
    """Through the engine: every generated token's logprob (and the prompt's) is the full forward's."""
    model = _model()
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11]]
    outs = Engine(model).generate(prompts, SamplingParams(max_new_tokens=6, temperature=0, logprobs=3,
                                                          prompt_logprobs=2))
    for prompt, out in zip(prompts, outs):
        seq = torch.tensor([prompt + out.token_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(seq)[0], -1)
        n = len(prompt)
        want = lp[n - 1:-1].gather(1, torch.tensor(out.token_ids)[:, None]).squeeze(1)
        got = torch.tensor([t.logprob for t in out.logprobs])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert [t.token_id for t in out.logprobs] == out.token_ids
        assert all(len(t.top) == 3 and t.top[0][0] == t.token_id for t in out.logprobs)  # greedy: top-1 is it
        assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == n
        want_p = lp[:n - 1].gather(1, torch.tensor(prompt[1:])[:, None]).squeeze(1)
        got_p = torch.tensor([t.logprob for t in out.prompt_logprobs[1:]])
        torch.testing.assert_close(got_p, want_p, atol=1e-4, rtol=0)
        assert all(len(t.top) == 2 for t in out.prompt_logprobs[1:])


def test_cache_holds_only_latent_and_rope_key():
    """The engine's cache is one pool allocated at start: per token and layer kv_lora_rank + rope dim values,
    in the model's dtype, and nothing else grows per token while generating."""
    model = _model()
    cfg = model.config
    eng = Engine(model, max_len=32, cache_memory=1 << 20)
    data = eng.runner.pool.data
    eng.generate([[1, 2, 3], [4, 5, 6, 7, 8]], SamplingParams(max_new_tokens=4, temperature=0))
    assert eng.runner.pool.data is data  # no new cache for a request
    per_token = cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    L, rows, T, width = data.shape
    assert (L, T, width) == (cfg.num_hidden_layers, 32 + 1, cfg.kv_lora_rank + cfg.qk_rope_head_dim)  # + scratch
    assert rows * (T * per_token * 4) <= 1 << 20 < (rows + 1) * (T * per_token * 4)  # as many rows as fit
    assert eng.stats.cache_bytes_per_token == per_token * 4  # fp32
    bf16 = Engine(model.to(torch.bfloat16), max_len=32, cache_memory=1 << 20)
    assert bf16.runner.pool.data.dtype == torch.bfloat16 and bf16.runner.pool.bytes_per_token() == per_token * 2
