"""The OpenAI-compatible API through the official `openai` client against a live server on 127.0.0.1: chat and
completions, streaming and not, usage, stop strings, seeds, n, logprobs and echo, reasoning_content, models,
health, metrics, API keys and CORS."""

import json

import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from nanoseek.engine import Engine, SamplingParams
from serve_helpers import ANSWER, REASONING, random_checkpoint, request, running, sse_events, post, taught_checkpoint


@pytest.fixture(scope="module")
def engine():
    return Engine.load(random_checkpoint())


@pytest.fixture(scope="module")
def server(engine):
    with running(engine) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]


def test_models_health_and_the_page(server):
    status, body, _ = request(server, "GET", "/v1/models")
    assert status == 200 and body["object"] == "list"
    card = body["data"][0]
    assert card["id"] == "tiny" and card["object"] == "model" and card["max_model_len"] == 512
    assert request(server, "GET", "/v1/models/tiny")[0] == 200
    assert request(server, "GET", "/v1/models/other")[0] == 404
    assert request(server, "GET", "/health")[:2] == (200, {"status": "ok"})
    status, html, headers = request(server, "GET", "/")
    assert status == 200 and "<title>nanoseek chat</title>" in html
    assert "script-src 'self'" in headers["content-security-policy"]
    for f in ("chat.js", "markdown.js", "chat.css"):
        assert request(server, "GET", f"/static/{f}")[0] == 200


def test_chat_plain_and_streamed_give_the_same_answer_with_usage(client, engine):
    kw = dict(model="tiny", messages=MSGS, max_tokens=12, temperature=0)
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny"
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    n_prompt = len(engine.encode_chat(MSGS))
    assert r.usage.prompt_tokens == n_prompt
    assert r.usage.total_tokens == n_prompt + r.usage.completion_tokens and 1 <= r.usage.completion_tokens <= 12

    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    body = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in body)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in body)
    assert text == (choice.message.content or "") and reasoning == (getattr(choice.message, "reasoning_content", None) or "")
    assert [c.choices[0].finish_reason for c in body][-1] == choice.finish_reason
    assert all(c.choices[0].finish_reason is None for c in body[:-1])
    usage = [c for c in chunks if not c.choices]
    assert len(usage) == 1 and chunks[-1] is usage[0]  # exactly one, after the choices
    assert usage[0].usage.completion_tokens == r.usage.completion_tokens
    assert usage[0].usage.prompt_tokens == n_prompt


def test_streams_end_with_done_and_usage_only_when_asked(server):
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 4, "temperature": 0, "stream": True}
    status, raw, headers = post(server, "/v1/chat/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and all(e["choices"] for e in events[:-1])
    status, raw, _ = post(server, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] >= 1


def test_answers_equal_the_engine_run_alone(client, engine):
    """The server adds nothing and loses nothing: the same text and token count as the engine itself."""
    ids = engine.encode_chat(MSGS)
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 10 and r.choices[0].finish_reason == "length"
    c = client.completions.create(model="tiny", prompt=ids, max_tokens=10, temperature=0,
                                  extra_body={"ignore_eos": True})
    alone = Engine.load(random_checkpoint()).generate(ids, SamplingParams(max_new_tokens=10, temperature=0,
                                                                          ignore_eos=True))
    assert c.choices[0].text == alone.text and c.usage.completion_tokens == 10


def test_stop_strings_streamed_equal_not_streamed(client):
    prompt = "The quick brown fox jumps"
    full = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    plain = [ch for ch in full if ch.isprintable() and ch != "\ufffd"]
    assert len(plain) > 8, full
    for stop in (full[6:8], [full[10:13], "never-there"], full[-1]):
        kw = dict(model="tiny", prompt=prompt, max_tokens=40, temperature=0, stop=stop,
                  extra_body={"ignore_eos": True})
        one = client.completions.create(**kw).choices[0]
        streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices)
        stops = [stop] if isinstance(stop, str) else stop
        cut = min(i for i in (full.find(s) for s in stops) if i >= 0)
        assert one.text == streamed == full[:cut], (stop, one.text, streamed)
        assert one.finish_reason == "stop"
    # chat: the same rule (stop strings never appear, stream == non-stream)
    base = dict(model="tiny", messages=MSGS, max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    text = client.chat.completions.create(**base).choices[0].message.content
    stop = text[4:6]
    one = client.chat.completions.create(**base, stop=stop).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**base, stop=stop,
                                                                                                 stream=True) if c.choices)
    assert one == streamed and stop not in one and text.startswith(one)


def test_seeds_reproduce_and_n_choices_differ(client):
    kw = dict(model="tiny", messages=MSGS, max_tokens=12, temperature=1.0, seed=1234, n=3,
              extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1  # each choice has its own seed (seed + index)
    assert a.usage.completion_tokens == 36 and a.usage.prompt_tokens == b.usage.prompt_tokens
    other = client.chat.completions.create(**{**kw, "seed": 99, "n": 1}).choices[0].message.content
    assert other != texts[0]
    streamed = ["", "", ""]
    for c in client.chat.completions.create(**kw, stream=True):
        for ch in c.choices:
            streamed[ch.index] += ch.delta.content or ""
    assert streamed == texts


def test_completions_logprobs_echo_equal_the_model_scores(client, engine):
    prompt = "The quick brown fox"
    ids = engine.tokenizer.encode(prompt)
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0, logprobs=2, echo=True,
                                  extra_body={"ignore_eos": True})
    ch = r.choices[0]
    lp = ch.logprobs
    assert r.object == "text_completion" and ch.text.startswith(prompt) and r.usage.completion_tokens == 3
    assert len(lp.tokens) == len(ids) + 3 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert "".join(lp.tokens[:len(ids)]) == prompt and lp.text_offset[:2] == [0, len(lp.tokens[0])]
    # the prompt's scores are the model's own (a full forward in fp32), within 1e-4
    with torch.no_grad():
        ref = torch.log_softmax(engine.model(torch.tensor([ids])).float(), -1)[0]
    want = [ref[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(want, abs=1e-4)
    for t, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert t in top.values() and max(top.values()) >= t and 2 <= len(top) <= 3
    greedy = lp.token_logprobs[len(ids):]
    assert all(g == pytest.approx(max(top.values())) for g, top in zip(greedy, lp.top_logprobs[len(ids):]))

    # max_tokens 0 with echo scores the prompt only
    z = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, logprobs=1, echo=True)
    assert z.choices[0].text == prompt and z.usage.completion_tokens == 0 and z.choices[0].finish_reason == "length"
    assert z.choices[0].logprobs.token_logprobs == lp.token_logprobs[:len(ids)]


def test_token_id_prompts_and_prompt_lists_number_their_choices(client, engine):
    p1, p2 = engine.tokenizer.encode("Hello"), engine.tokenizer.encode("Another line")
    r = client.completions.create(model="tiny", prompt=[p1, p2], max_tokens=4, n=2, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text  # greedy
    assert r.usage.prompt_tokens == len(p1) + len(p2) and r.usage.completion_tokens == 16
    s = client.completions.create(model="tiny", prompt=["Hello", "Another line"], max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert [c.text for c in s.choices] == [r.choices[0].text, r.choices[2].text]


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=2, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for t in content:
        assert len(t.top_logprobs) == 2 and t.logprob == pytest.approx(t.top_logprobs[0].logprob)
        assert isinstance(t.bytes, list) and all(0 <= b < 256 for b in t.bytes)
    # the bytes rebuild the text exactly, even where a token holds part of a character
    assert bytes(b for t in content for b in t.bytes).decode("utf-8", "replace").startswith(
        r.choices[0].message.content[:1])


def test_multi_turn_reuses_the_cached_prefix(client):
    turn1 = [{"role": "user", "content": "Another line of text. " * 6}]
    a = client.chat.completions.create(model="tiny", messages=turn1, max_tokens=8, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert a.usage.prompt_tokens_details.cached_tokens == 0 or a.usage.prompt_tokens > 0
    turn2 = turn1 + [{"role": "assistant", "content": a.choices[0].message.content,
                      "reasoning_content": "dropped"}, {"role": "user", "content": "And?"}]
    b = client.chat.completions.create(model="tiny", messages=turn2, max_tokens=8, temperature=0)
    assert b.usage.prompt_tokens_details.cached_tokens >= len(turn1[0]["content"]) // 8  # most of turn 1


@pytest.fixture(scope="module")
def taught():
    engine = Engine.load(taught_checkpoint())
    with running(engine) as s:
        yield s, openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.slow  # the taught model trains for ~5 s first; the page's browser test (slow) shares it
def test_reasoning_goes_to_reasoning_content_in_messages_and_deltas(taught):
    server, client = taught
    msgs = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=200)
    m = r.choices[0].message
    assert m.reasoning_content == REASONING and m.content == ANSWER and r.choices[0].finish_reason == "stop"
    kinds, reasoning, content = [], "", ""
    for c in client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=200, stream=True):
        if not c.choices:
            continue
        d = c.choices[0].delta
        if getattr(d, "reasoning_content", None):
            reasoning += d.reasoning_content
            kinds.append("r")
        if d.content:
            content += d.content
            kinds.append("c")
    assert reasoning == REASONING and content == ANSWER
    assert "".join(kinds).rstrip("c") == "r" * kinds.count("r") and kinds.count("c") >= 1  # reasoning first
    # an earlier answer's reasoning_content is accepted and not fed back: the same prompt either way
    turn = [*msgs, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": "hi"}]
    with_r = [*msgs, {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}, turn[-1]]
    a = client.chat.completions.create(model="tiny", messages=turn, temperature=0, max_tokens=5)
    b = client.chat.completions.create(model="tiny", messages=with_r, temperature=0, max_tokens=5)
    assert a.usage.prompt_tokens == b.usage.prompt_tokens and a.choices[0].message == b.choices[0].message


def test_metrics_are_prometheus_text_with_latency_histograms(server, client):
    client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=6, temperature=0, stream=True)
    for _ in client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=6, temperature=0, stream=True):
        pass
    status, text, headers = request(server, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("nanoseek_time_to_first_token_seconds", "nanoseek_inter_token_latency_seconds",
                 "nanoseek_request_latency_seconds"):
        assert fams[name].type == "histogram"
        count = [s.value for s in fams[name].samples if s.name == name + "_count"][0]
        assert count >= 1
    for name in ("nanoseek_requests_waiting", "nanoseek_requests_running", "nanoseek_prefix_cache_hit_rate"):
        assert fams[name].type == "gauge"
    assert fams["nanoseek_generation_tokens"].samples[0].value > 0
    assert fams["nanoseek_prompt_tokens"].samples[0].value > 0
    by_status = {(s.labels["endpoint"], s.labels["status"]): s.value for s in fams["nanoseek_http_requests"].samples}
    assert by_status[("/v1/chat/completions", "200")] >= 2
    finished = {s.labels["finish_reason"]: s.value for s in fams["nanoseek_requests_finished"].samples}
    assert sum(finished.values()) >= 2


def test_api_key_is_required_when_set():
    with running(Engine.load(random_checkpoint()), api_key="sk-test") as s:
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.status_code == 401 and e.value.response.json()["error"]["code"] == "invalid_api_key"
        status, body, headers = request(s, "GET", "/v1/models")
        assert status == 401 and "Authorization: Bearer" in body["error"]["message"]
        assert headers["www-authenticate"] == "Bearer"
        assert request(s, "GET", "/metrics")[0] == 401
        assert request(s, "GET", "/health")[0] == 200 and request(s, "GET", "/")[0] == 200  # public
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0)
        assert good.models.list().data[0].id == "tiny"
        r = good.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2)
        assert r.usage.completion_tokens >= 1


def test_cors_is_off_unless_origins_are_given(engine, server):
    origin = {"Origin": "http://elsewhere.test"}
    _, _, headers = request(server, "GET", "/v1/models", headers=origin)
    assert "access-control-allow-origin" not in headers
    pre = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    assert "access-control-allow-origin" not in request(server, "OPTIONS", "/v1/chat/completions", headers=pre)[2]
    own = Engine.load(random_checkpoint())  # one engine per running server
    with running(own, cors_origins=("http://elsewhere.test",), api_key="k") as s:
        status, _, headers = request(s, "OPTIONS", "/v1/chat/completions", headers=pre)
        assert status == 200 and headers["access-control-allow-origin"] == "http://elsewhere.test"
        _, _, headers = request(s, "GET", "/v1/models", headers={**origin, "Authorization": "Bearer k"})
        assert headers["access-control-allow-origin"] == "http://elsewhere.test"
        other = {"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"}
        assert "access-control-allow-origin" not in request(s, "OPTIONS", "/v1/chat/completions", headers=other)[2]


def test_content_parts_and_developer_role(client):
    parts = [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": "The quick"}, {"type": "text", "text": "brown fox"}]}]
    joined = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick\nbrown fox"}]
    a = client.chat.completions.create(model="tiny", messages=parts, max_tokens=6, temperature=0)
    b = client.chat.completions.create(model="tiny", messages=joined, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    assert json.loads(a.model_dump_json())["choices"][0]["message"]["role"] == "assistant"


def test_completions_stream_with_echo_logprobs_and_usage_equals_the_plain_answer(server, client):
    kw = dict(model="tiny", prompt="The quick brown", max_tokens=5, temperature=0, logprobs=1, echo=True,
              extra_body={"ignore_eos": True})
    plain = client.completions.create(**kw).choices[0]
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    body = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in body) == plain.text
    tokens = [t for c in body if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == plain.logprobs.tokens
    assert body[-1].choices[0].finish_reason == "length" and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5
    status, raw, _ = post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 0, "echo": True, "stream": True})
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and "".join(e["choices"][0]["text"] for e in events[:-1]) == "Hi"


def test_two_servers_never_step_one_engine(engine, server):
    """A second app on an engine another running server steps is refused at start: two engine threads would
    race inside one scheduler (a server error under load, not a clean failure)."""
    with pytest.raises(RuntimeError, match="already stepped by another running server"):
        with running(engine):
            pass
    assert request(server, "GET", "/health")[0] == 200  # the first server is untouched
