"""Generation through the Engine: greedy and speculative agreement, seeds, sampling filters, penalties,
the speculative acceptance rule's distribution, stop token ids and the errors a caller can cause."""

import pytest
import torch

import nanoseek
from nanoseek.config import preset
from nanoseek.engine import ContextLengthError, Engine, EngineError, SamplingError, SamplingParams
from nanoseek.engine.sampling import Sampler, truncate
from nanoseek.engine import speculative
from nanoseek.engine.speculative import SpeculationPolicy, verify

from conftest import randomize_


PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], list(range(20, 45))]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = nanoseek.DeepSeekV3(preset("tiny", max_position_embeddings=64)).eval()
    randomize_(m)
    return m


def naive_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat((ids, model(ids)[:, -1].argmax(-1, keepdim=True)), dim=1)
    return ids[0, len(prompt):].tolist()


def test_batched_greedy_equals_uncached_greedy(model):
    outs = Engine(model).generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0))
    for p, o in zip(PROMPTS, outs):
        assert o.token_ids == naive_greedy(model, p, 10)
        assert o.finish_reason == "length"


def test_requests_leave_the_batch_when_done(model):
    """Different max_new_tokens per request: the short one finishes early, the others are unaffected."""
    eng = Engine(model)
    params = [SamplingParams(max_new_tokens=n, temperature=0) for n in (2, 12, 5)]
    outs = eng.generate(PROMPTS, params)
    assert [len(o.token_ids) for o in outs] == [2, 12, 5]
    for p, o in zip(PROMPTS, outs):
        assert o.token_ids == naive_greedy(model, p, len(o.token_ids))
    assert eng.stats.generated_tokens == 19


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_speculative_equals_greedy(model, k):
    eng, spec_eng = Engine(model), Engine(model, speculative=k)
    plain = eng.generate(PROMPTS, SamplingParams(max_new_tokens=14, temperature=0))
    spec = spec_eng.generate(PROMPTS, SamplingParams(max_new_tokens=14, temperature=0))
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    assert spec_eng.stats.drafted > 0 and 0.0 <= spec_eng.stats.acceptance_rate <= 1.0
    assert all(o.drafted > 0 for o in spec)
    # penalties take the general acceptance path (per-position distributions with the draft history)
    pen = SamplingParams(max_new_tokens=14, temperature=0, repetition_penalty=1.3, presence_penalty=0.5)
    assert [o.token_ids for o in spec_eng.generate(PROMPTS, pen)] == [o.token_ids for o in eng.generate(PROMPTS, pen)]


def test_speculative_with_a_restricted_draft_vocabulary_keeps_the_output(model):
    """Drafts drawn from the low token ids only (a cheaper draft head): greedy output unchanged, with and
    without penalties (the general acceptance path pads the draft distribution with zeros)."""
    eng = Engine(model, draft_vocab=64)
    assert eng.draft_vocab == 64
    for p in (SamplingParams(max_new_tokens=12, temperature=0),
              SamplingParams(max_new_tokens=12, temperature=0, frequency_penalty=0.7)):
        plain = eng.generate(PROMPTS, p)
        spec = Engine(eng.model, speculative=2, draft_vocab=64).generate(PROMPTS, p)
        assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    sampled = SamplingParams(max_new_tokens=12, temperature=0.8, seed=5)
    spec_eng = Engine(eng.model, speculative=2, draft_vocab=64)
    a, b = spec_eng.generate(PROMPTS, sampled), spec_eng.generate(PROMPTS, sampled)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


def perfect_draft_model():
    """A one-layer model whose MTP module predicts exactly what the main model will: its MTP layer is a copy
    of layer 0 fed only the next token's embedding (unit-RMS embeddings make enorm an identity). MTP position i
    then computes what the main model computes at position i + 1 (rope is relative), so every draft stands."""
    m = nanoseek.DeepSeekV3(preset("tiny", max_position_embeddings=64, num_hidden_layers=1,
                                   first_k_dense_replace=0)).eval()
    randomize_(m)
    d = m.config.hidden_size
    with torch.no_grad():
        emb = m.model.embed_tokens.weight
        emb.div_(emb.pow(2).mean(-1, keepdim=True).sqrt())
        mtp = m.mtp[0]
        mtp.load_state_dict(m.model.layers[0].state_dict(), strict=False)
        mtp.enorm.weight.fill_(1.0)
        mtp.eh_proj.weight.zero_()
        mtp.eh_proj.weight[:, :d] = torch.eye(d)
        mtp.shared_head.norm.weight.copy_(m.model.norm.weight)
    return m


def test_speculative_with_a_perfect_draft_accepts_every_draft():
    """Every draft must be accepted: this drives multi-token acceptance and the MTP catch-up bookkeeping."""
    m = perfect_draft_model()
    plain = Engine(m).generate(PROMPTS, SamplingParams(max_new_tokens=16, temperature=0))
    eng = Engine(m, speculative=3)
    spec = eng.generate(PROMPTS, SamplingParams(max_new_tokens=16, temperature=0))
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    assert eng.stats.acceptance_rate > 0.95
    assert eng.stats.steps < 0.5 * sum(len(o.token_ids) for o in plain)  # several tokens per forward


def test_auto_speculation_switching_modes_keeps_the_output_and_the_draft_cache(monkeypatch):
    """Plain steps and speculative rounds in any order: the greedy output is plain decoding's, and the drafts
    after a run of plain steps still all stand (the draft cache caught up on the positions it owed)."""
    m = perfect_draft_model()
    greedy = SamplingParams(max_new_tokens=36, temperature=0)
    plain = Engine(m).generate(PROMPTS, greedy)
    eng = Engine(m, speculative="auto")
    assert eng.speculative == 1
    modes = iter(([False] * 5 + [True, False, False, True, True, False] * 20) * 3)
    monkeypatch.setattr(eng.scheduler.spec.policy, "choose", lambda: next(modes))
    for prompt, want in zip(PROMPTS, plain):  # auto speculates at batch 1
        assert eng.generate(prompt, greedy).token_ids == want.token_ids
        assert eng.stats.drafted >= 5 and eng.stats.acceptance_rate > 0.95
    # a request that owes the draft cache too many positions gives up speculating, and its output stays
    monkeypatch.setattr(speculative, "MAX_PENDING", 3)
    modes = iter([False] * 6 + [True] * 100)
    assert eng.generate(PROMPTS[0], greedy).token_ids == plain[0].token_ids and eng.stats.drafted == 0


def test_auto_speculation_leaves_sampled_requests_to_plain_decoding(model):
    """A seeded sampled answer never depends on timing: in auto mode it decodes as plain decoding does, and
    the greedy request beside it speculates once it runs alone (auto speculates at batch 1)."""
    sampled = SamplingParams(max_new_tokens=4, temperature=0.9, seed=7)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    plain = Engine(model).generate(PROMPTS[:2], [sampled, greedy])
    eng = Engine(model, speculative="auto")
    eng.scheduler.spec.policy.choose = lambda: True
    out = eng.generate(PROMPTS[:2], [sampled, greedy])
    assert [o.token_ids for o in out] == [o.token_ids for o in plain]
    assert out[0].drafted == 0 and out[1].drafted > 0
    no_mtp = nanoseek.DeepSeekV3(preset("tiny", num_nextn_predict_layers=0))
    assert Engine(no_mtp, speculative="auto").speculative == 0  # nothing to draft with: plain decoding


def test_the_speculation_policy_runs_the_faster_mode_and_keeps_looking():
    policy = SpeculationPolicy(explore=4, explore_max=16, block=3, settle=1, window=8)  # margin 1.1

    def run(steps, round_cost, spec_tokens=2, outlier_at=None):  # a plain step costs 1.0 and yields 1 token
        chosen = []
        for i in range(steps):
            spec = policy.choose()
            cost = (100.0 if i == outlier_at else round_cost) if spec else 1.0
            policy.record(spec, cost, spec_tokens if spec else 1)
            chosen.append(spec)
        return chosen

    first = run(100, round_cost=1.5)  # 1.33x: speculate
    assert first[:12] == [True] * 3 + [False] * 6 + [True] * 3  # both modes measured, around the same positions
    assert policy.speedup() == pytest.approx(4 / 3)
    tries = [i for i in range(12, 100) if not first[i] and first[i - 1]]  # plain blocks, ever further apart
    assert len(tries) >= 3 and all(first[i:i + 3] == [False] * 3 for i in tries)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]
    assert sum(first[12:]) >= 0.75 * 88
    run(10, round_cost=1.5, outlier_at=3)  # one slow round (a page fault, another process) changes nothing
    assert policy.speedup() == pytest.approx(4 / 3)
    later = run(40, round_cost=3.0)  # acceptance gone: 0.67x, plain once the rounds show it
    assert sum(later[12:]) <= 6
    run(60, round_cost=1.9)  # 1.05x: within the margin, plain
    assert sum(run(40, round_cost=1.9)) <= 6


def test_seeded_sampling_is_reproducible(model):
    eng = Engine(model)
    p = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=1234)
    a = eng.generate(PROMPTS, p)
    b = eng.generate(PROMPTS, p)
    c = eng.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=99))
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in c]
    # a request's output does not depend on the other requests in the batch
    alone = eng.generate(PROMPTS[1], p)
    assert alone.token_ids == a[1].token_ids
    # speculative sampling is reproducible too
    s1 = Engine(eng.model, speculative=2).generate(PROMPTS, p)
    s2 = Engine(eng.model, speculative=2).generate(PROMPTS, p)
    assert [o.token_ids for o in s1] == [o.token_ids for o in s2]


def test_stop_token_ids_end_generation(model):
    eng = Engine(model)
    free = eng.generate(PROMPTS[0], SamplingParams(max_new_tokens=10, temperature=0))
    stop = free.token_ids[4]
    first = free.token_ids.index(stop)
    out = eng.generate(PROMPTS[0], SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=[stop]))
    assert out.token_ids == free.token_ids[:first + 1]  # the stop token is reported in the ids
    assert out.finish_reason == "stop" and out.stop_reason == stop
    spec = Engine(model, speculative=3).generate(
        PROMPTS[0], SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=[stop]))
    assert spec.token_ids == out.token_ids and spec.finish_reason == "stop"


def test_stream_yields_every_token_once_and_the_finish_reason(model):
    eng = Engine(model)
    p = SamplingParams(max_new_tokens=7, temperature=0)
    deltas = list(eng.stream(PROMPTS, p))
    outs = eng.generate(PROMPTS, p)
    for i, o in enumerate(outs):
        mine = [d for d in deltas if d.index == i]
        assert sum((d.token_ids for d in mine), []) == o.token_ids
        assert [d.finish_reason for d in mine][-1] == "length" and all(d.finish_reason is None for d in mine[:-1])


def test_bad_requests_are_rejected_with_clear_messages(model):
    eng = Engine(model)
    for bad in (0, -3):
        with pytest.raises(SamplingError, match="max_new_tokens must be at least 1"):
            eng.generate([1, 2], SamplingParams(max_new_tokens=bad))
    with pytest.raises(ContextLengthError,
                       match=r"exceeds the model's context length of 64 tokens; ask for at most 62"):
        eng.generate([1, 2], SamplingParams(max_new_tokens=10**6))
    with pytest.raises(ContextLengthError, match="shorten the prompt"):
        eng.generate(list(range(1, 70)), SamplingParams(max_new_tokens=1))
    with pytest.raises(SamplingError, match="temperature"):
        eng.generate([1, 2], SamplingParams(temperature=-1))
    with pytest.raises(SamplingError, match="top_p"):
        eng.generate([1, 2], SamplingParams(top_p=0))
    with pytest.raises(EngineError, match="empty"):
        eng.generate([[]], SamplingParams())
    with pytest.raises(EngineError, match="outside the vocabulary"):
        eng.generate([1, 10**6], SamplingParams())
    with pytest.raises(EngineError, match="need a tokenizer"):
        eng.generate("hello", SamplingParams())
    with pytest.raises(EngineError, match="needs an MTP module"):
        Engine(nanoseek.DeepSeekV3(preset("tiny", num_nextn_predict_layers=0)), speculative=2)
    # exactly at the context limit is fine, also when speculative drafts would run past it
    out = eng.generate([1, 2], SamplingParams(max_new_tokens=62, temperature=0))
    assert len(out.token_ids) == 62
    outs = Engine(model, speculative=4).generate(
        [[1, 2], [3, 4, 5, 6, 7]], [SamplingParams(max_new_tokens=n, temperature=0) for n in (62, 59)])
    assert outs[0].token_ids == out.token_ids and len(outs[1].token_ids) == 59


# ---- sampling math ---------------------------------------------------------------------------------------
def test_truncation_filters():
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    torch.testing.assert_close(truncate(p, top_k=2), torch.tensor([5 / 7, 2 / 7, 0, 0, 0]))
    # top-p keeps the smallest prefix reaching p, including the token that crosses it
    torch.testing.assert_close(truncate(p, top_p=0.6), torch.tensor([0.5 / 0.7, 0.2 / 0.7, 0, 0, 0]))
    torch.testing.assert_close(truncate(p, top_p=0.5), torch.tensor([1.0, 0, 0, 0, 0]))
    # min-p: keep tokens with at least min_p x the top probability
    torch.testing.assert_close(truncate(p, min_p=0.3), torch.tensor([0.5, 0.2, 0.15, 0, 0]) / 0.85)


def test_penalties():
    logits = torch.tensor([2.0, -1.0, 0.5, 1.0])
    s = Sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), 4, [3], torch.device("cpu"))
    for t in (0, 0, 2):
        s.observe(t)
    # presence -0.5 once seen, frequency -0.25 per occurrence; prompt tokens do not count for these two
    torch.testing.assert_close(s.penalize(logits), torch.tensor([2.0 - 0.5 - 0.5, -1.0, 0.5 - 0.5 - 0.25, 1.0]))
    r = Sampler(SamplingParams(repetition_penalty=2.0), 4, [3], torch.device("cpu"))
    r.observe(1)
    # repetition: prompt and output tokens; positive logits divided, negative multiplied
    torch.testing.assert_close(r.penalize(logits), torch.tensor([2.0, -2.0, 0.5, 0.5]))


def test_greedy_penalized_generation_avoids_repeats(model):
    out = Engine(model).generate([1, 2, 3], SamplingParams(max_new_tokens=20, temperature=0, presence_penalty=2.0,
                                                            repetition_penalty=1e6))
    assert len(set(out.token_ids)) == len(out.token_ids)


def test_speculative_acceptance_keeps_the_target_distribution():
    """Draw the first token of a round many times with a draft q far from the target p: the accepted or
    corrected token is distributed as p (the rule is exact, not approximately so)."""
    V, n = 5, 40000
    torch.manual_seed(0)
    p_logits = torch.tensor([1.5, 0.2, -0.5, 0.9, 0.0])
    q = torch.tensor([0.05, 0.6, 0.2, 0.05, 0.1])
    target = torch.softmax(p_logits, -1)
    s = Sampler(SamplingParams(temperature=1.0, seed=7), V, [], torch.device("cpu"))
    counts = torch.zeros(V)
    drafts = torch.multinomial(q, n, replacement=True, generator=torch.Generator().manual_seed(3)).tolist()
    logits = torch.stack((p_logits, p_logits))  # position 0 and the bonus position
    for d in drafts:
        counts[verify(s, logits, [d], [q])[0]] += 1
    torch.testing.assert_close(counts / n, target, atol=0.01, rtol=0)
