"""The scheduler: requests that come and go while others run give exactly what each gives alone (greedy, fp32);
finished and aborted requests free their cache rows at once; a full queue refuses; a long prompt's chunked
prefill never stalls running decodes; conversations reuse their cached prefix and still give a cold run's
output, also when rows are evicted under a small memory budget."""

import pytest
import torch

import nanoseek
from nanoseek.config import preset
from nanoseek.engine import Engine, QueueFullError, SamplingParams

from conftest import randomize_

GREEDY = dict(temperature=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = nanoseek.DeepSeekV3(preset("tiny", max_position_embeddings=256)).eval()
    randomize_(m)
    return m


def _prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def _alone(model, prompt, n, **kw):
    return Engine(model, prefix_caching=False, **kw).generate(prompt, SamplingParams(max_new_tokens=n, **GREEDY))


def _drive(engine, arrivals: dict, params: dict, abort_at: dict | None = None, max_steps=500):
    """Step the engine, adding request i at step arrivals (step -> [i]) and aborting at abort_at (step -> [i]).
    Returns the tokens and finish reason each request got, and the step records."""
    ids, toks, finish, records = {}, {}, {}, []
    for step in range(max_steps):
        for i in arrivals.get(step, []):
            ids[engine.add_request(*params[i])] = i
        for i in (abort_at or {}).get(step, []):
            engine.abort(next(rid for rid, j in ids.items() if j == i))
        for d in engine.step():
            i = ids[d.index]
            toks.setdefault(i, []).extend(d.token_ids)
            if d.finish_reason:
                finish[i] = d.finish_reason
        records.append(engine.scheduler.records[-1])
        if step > max(arrivals) and not engine.has_work:
            return toks, finish, records, ids
    raise AssertionError("the engine did not finish")


def _idle(engine):
    """Nothing running or waiting, and every row free or holding a cached prefix."""
    s = engine.scheduler
    assert not s.requests and not s.waiting and not s.prefilling and engine.slots.n_decoding == 0
    assert {slot.state for slot in engine.slots.slots} <= {"free", "cached"}


def test_staggered_arrivals_and_an_abort_give_what_each_gives_alone(model):
    prompts = _prompts([5, 40, 17, 3, 60, 9])
    lens = [20, 7, 30, 12, 9, 25]
    params = {i: (p, SamplingParams(max_new_tokens=n, **GREEDY)) for i, (p, n) in enumerate(zip(prompts, lens))}
    alone = [_alone(model, p, n).token_ids for p, n in zip(prompts, lens)]
    engine = Engine(model, max_batch=3, step_tokens=24)  # more requests than rows at once; chunked prompts
    toks, finish, records, _ = _drive(engine, {0: [0, 1], 2: [2], 5: [3, 4], 9: [5]}, params, abort_at={8: [2]})
    for i in (0, 1, 3, 4, 5):
        assert toks[i] == alone[i], i
        assert finish[i] == "length"
    assert finish[2] == "abort" and toks[2] == alone[2][:len(toks[2])] and 0 < len(toks[2]) < lens[2]
    assert max(len(r.decoded) for r in records) <= 3  # at most max_batch running
    _idle(engine)


def test_finished_and_aborted_requests_free_their_rows_in_the_same_step(model):
    engine = Engine(model, max_batch=4, prefix_caching=False)
    short, long_ = _prompts([4, 4])
    a = engine.add_request(short, SamplingParams(max_new_tokens=2, **GREEDY))
    b = engine.add_request(long_, SamplingParams(max_new_tokens=50, **GREEDY))
    engine.step()  # both prefilled, first tokens out
    assert engine.slots.n_decoding == 2
    deltas = engine.step()  # a's second token ends it
    assert [d.finish_reason for d in deltas if d.index == a] == ["length"]
    assert engine.slots.n_decoding == 1 and a not in engine.scheduler.requests
    assert sum(s.state == "free" for s in engine.slots.slots) == len(engine.slots.slots) - 1
    engine.abort(b)
    deltas = engine.step()
    assert [d.finish_reason for d in deltas if d.index == b] == ["abort"]
    _idle(engine)
    assert all(s.state == "free" for s in engine.slots.slots)  # without prefix caching nothing is kept


def test_a_full_queue_refuses_and_recovers(model):
    engine = Engine(model, max_waiting=2)
    p = SamplingParams(max_new_tokens=3, **GREEDY)
    engine.add_request([1, 2, 3], p)
    engine.add_request([4, 5, 6], p)
    with pytest.raises(QueueFullError, match="queue is full"):
        engine.add_request([7, 8, 9], p)
    assert QueueFullError.http_status == 503
    while engine.has_work:
        engine.step()
    engine.add_request([7, 8, 9], p)  # room again


def test_chunked_prefill_of_a_long_prompt_does_not_stall_running_decodes(model):
    short, long_ = _prompts([6, 150])
    params = {0: (short, SamplingParams(max_new_tokens=40, **GREEDY)),
              1: (long_, SamplingParams(max_new_tokens=5, **GREEDY))}
    engine = Engine(model, step_tokens=20)
    toks, _, records, ids = _drive(engine, {0: [0], 2: [1]}, params)
    rid = {i: r for r, i in ids.items()}
    prefill_steps = [r for r in records if rid[1] in r.prefilled]
    assert len(prefill_steps) >= 150 // 20  # the long prompt went in over many steps ...
    assert all(rid[0] in r.decoded for r in prefill_steps)  # ... and the short one got a token in each
    assert all(sum(r.prefilled.values()) + len(r.decoded) <= 20 for r in prefill_steps)  # within the budget
    assert toks[0] == _alone(model, short, 40).token_ids and toks[1] == _alone(model, long_, 5).token_ids


def test_a_longer_prompt_does_not_widen_a_prefill_batch_with_padding(model):
    """Prompts prefilled together are right-padded to the widest chunk: a later, longer prompt takes the first
    chunk's width (at least MIN_CHUNK) now and the rest in the next steps; outputs stay exact."""
    from nanoseek.engine.scheduler import MIN_CHUNK

    prompts = _prompts([10, 150, 20])
    params = {i: (p, SamplingParams(max_new_tokens=4, **GREEDY)) for i, p in enumerate(prompts)}
    engine = Engine(model, prefix_caching=False)
    toks, _, records, ids = _drive(engine, {0: [0, 1, 2]}, params)
    rid = {i: r for r, i in ids.items()}
    assert [records[0].prefilled[rid[i]] for i in range(3)] == [10, MIN_CHUNK, 20]  # not 150 wide
    assert records[1].prefilled == {rid[1]: 150 - MIN_CHUNK}  # the rest, in one chunk of its own
    assert all(toks[i] == _alone(model, p, 4).token_ids for i, p in enumerate(prompts))


@pytest.mark.parametrize("speculative", [0, 2, "auto"])
def test_turn_n_of_a_conversation_prefills_only_its_new_tokens(model, speculative):
    warm = Engine(model, speculative=speculative)
    if speculative == "auto":  # the policy finds plain steps faster: the draft cache falls behind, and the
        warm.scheduler.spec.policy.choose = lambda: False  # next turn still reuses the whole conversation
        speculative = 0
    g = torch.Generator().manual_seed(3)
    convo = torch.randint(0, 256, (37,), generator=g).tolist()
    p = SamplingParams(max_new_tokens=10, **GREEDY)
    for turn in range(4):
        before = warm.scheduler.counters.prompt_tokens_computed
        out = warm.generate(convo, p)
        computed = warm.scheduler.counters.prompt_tokens_computed - before
        assert out.token_ids == _alone(model, convo, 10, speculative=speculative).token_ids
        if turn:
            # in the cache: the previous turn's prompt and answer, except the answer's last token (never fed).
            # With drafts, what the draft cache also holds: one fewer (a draft position needs the token after
            # it), and the last round's accepted tokens (up to k + 1) never reached the draft cache.
            if speculative:
                assert prev_cached - 1 - (speculative + 1) <= out.cached_tokens <= prev_cached - 1
            else:
                assert out.cached_tokens == prev_cached
            assert computed == len(convo) - out.cached_tokens
        prev_cached = len(convo) + len(out.token_ids) - 1
        convo = convo + out.token_ids + torch.randint(0, 256, (13,), generator=g).tolist()


def test_a_shared_prefix_in_a_busy_row_is_copied_and_outputs_stay_exact(model):
    system = _prompts([48], seed=5)[0]
    a, b = system + [7, 8, 9], system + [10, 11]
    engine = Engine(model)
    ra = engine.add_request(a, SamplingParams(max_new_tokens=30, **GREEDY))
    engine.step()  # a prefilled and decoding: its row is busy
    rb = engine.add_request(b, SamplingParams(max_new_tokens=5, **GREEDY))
    outs = {}
    while engine.has_work:
        for d in engine.step():
            outs.setdefault(d.index, []).extend(d.token_ids)
    assert engine.scheduler.counters.prompt_tokens_cached == 48  # b took the system prompt from a's row
    assert outs[rb] == _alone(model, b, 5).token_ids and outs[ra][-29:] == _alone(model, a, 30).token_ids[1:]


def test_eviction_under_a_small_memory_budget_keeps_outputs_exact(model):
    rows = 3
    row_bytes = engine_row_bytes(model, max_len=96)
    engine = Engine(model, max_len=96, cache_memory=rows * row_bytes, max_batch=2)
    assert len(engine.slots.slots) == rows
    convos = _prompts([20, 25, 30, 22, 27], seed=7)
    p = SamplingParams(max_new_tokens=6, **GREEDY)
    # conversation 0 comes back every other turn and keeps its row; the other four take turns in the
    # remaining rows, each evicting the least recently used
    hits = {}
    for turn, i in enumerate([0, 1, 0, 2, 0, 3, 0, 4, 0, 1, 0, 2]):
        c = convos[i]
        out = engine.generate(c, p)
        assert out.token_ids == _alone(model, c, 6).token_ids, (turn, i)
        hits.setdefault(i, []).append(out.cached_tokens > 0)
        convos[i] = c + out.token_ids + [i + 1, turn + 1]
    _idle(engine)
    assert hits[0] == [False] + [True] * 5  # the hot conversation always found its prefix
    assert hits[1] == [False, False] and hits[2] == [False, False]  # the others had been evicted


def engine_row_bytes(model, max_len):
    from nanoseek.engine.cache import LatentPool

    return LatentPool.row_bytes(model.config, max_len, torch.float32)
