"""Every input the server refuses, refused the OpenAI way: the status the issue names, the `error` object the
official client turns into its typed exception, `param` spelled as the client sent it. And no input, however
malformed, crashes the server or leaves a request behind in the engine."""

import threading

import openai
import pytest

from nanoseek.engine import Engine
from serve_helpers import held, post, random_checkpoint, request, running, wait_idle, wait_waiting

MSGS = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def engine():
    return Engine.load(random_checkpoint(), max_waiting=4)


@pytest.fixture(scope="module")
def server(engine):
    with running(engine, max_body_bytes=64 * 1024, max_tokens_limit=300) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _error(exc_info):
    return exc_info.value.response.json()["error"]


@pytest.mark.parametrize("kw, param", [
    (dict(temperature=3.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(n=0), "n"),
    (dict(n=1000), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=301), "max_tokens"),  # the server's per-request limit
    (dict(max_completion_tokens=500), "max_completion_tokens"),
    (dict(max_tokens=5, max_completion_tokens=490), "max_completion_tokens"),  # the context (512); newer name wins
    (dict(presence_penalty=-3), "presence_penalty"),
    (dict(top_logprobs=3), "top_logprobs"),  # without logprobs
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    (dict(seed=2**70), "seed"),
    (dict(stop=[""] * 17), "stop"),
    (dict(stream_options={"include_usage": True}), "stream_options"),  # without stream
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
    (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(logit_bias={"5": 10}), "logit_bias"),
    (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]), "messages[0].role"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[0].type"),
    (dict(messages=[{"role": "user"}, {"content": "no role"}]), "messages[1].role"),
    (dict(messages=[{"role": "user"}]), "messages[0].content"),
    (dict(messages=[{"role": "system", "content": None}, {"role": "user", "content": "hi"}]), "messages[0].content"),
    (dict(extra_body={"top_k": -5}), "top_k"),
    (dict(extra_body={"min_p": 2}), "min_p"),
])
def test_invalid_chat_fields_are_400_naming_the_field(client, kw, param):
    args = {"model": "tiny", "messages": MSGS, **kw}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    err = _error(e)
    assert e.value.status_code == 400 and err["param"] == param, err
    assert err["type"] == "invalid_request_error" and err["message"]


def test_context_overflow_is_400_with_the_numbers(client, engine):
    long = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 60}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=long, max_tokens=10)
    err = _error(e)
    assert err["code"] == "context_length_exceeded" and "512" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="Hello", max_tokens=299, extra_body={"max_tokens": 600})
    assert _error(e)["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:  # a prompt that fills the context, no max_tokens given
        client.completions.create(model="tiny", prompt=[5] * 512, max_tokens=None)
    assert _error(e)["code"] == "context_length_exceeded"


def test_a_prompt_too_long_in_characters_is_refused_before_it_is_tokenized(server, engine, monkeypatch):
    """Issue 22.10: a prompt with more characters than the context holds tokens times the longest token's
    characters cannot fit: 400 at once, without tokenizing it (a 1.9M-character prompt took 1.8 s to tokenize)."""
    limit = engine.max_len * int(engine.tokenizer.token_bytes().max())  # characters: each is at least a byte
    seen = []
    encode = engine.tokenizer.encode
    monkeypatch.setattr(engine.tokenizer, "encode", lambda text, *a, **k: seen.append(len(text)) or encode(text, *a, **k))
    big = ("The quick brown fox. " * (limit // 21 + 2))[:limit + 1]
    third = big[:limit // 3 + 1]
    for path, body, param in [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": big}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": third}, {"role": "user", "content": third},
                                               {"role": "assistant", "content": third}]}, "messages"),
        ("/v1/completions", {"prompt": big}, "prompt"),
        ("/v1/completions", {"prompt": ["short", big]}, "prompt"),
    ]:
        status, resp, _ = post(server, path, {**body, "max_tokens": 2})
        err = resp["error"]
        assert status == 400 and err["code"] == "context_length_exceeded" and err["param"] == param, resp
        assert "characters" in err["message"] and f"context of {engine.max_len} tokens" in err["message"], err
    assert max(seen, default=0) < 10, seen  # only "short" was tokenized
    assert wait_idle(engine)
    assert post(server, "/v1/completions", {"prompt": "The quick brown fox", "max_tokens": 2})[0] == 200


def test_invalid_completion_fields(client, engine):
    V = engine.config.vocab_size
    for kw, param in [(dict(prompt=[V + 5]), "prompt"), (dict(prompt=[-1]), "prompt"), (dict(prompt=[]), "prompt"),
                      (dict(prompt=[[1, 2], []]), "prompt"), (dict(prompt="x", suffix="y"), "suffix"),
                      (dict(prompt="x", best_of=3), "best_of"), (dict(prompt="x", logprobs=21), "logprobs"),
                      (dict(prompt="x", max_tokens=-1), "max_tokens"), (dict(prompt=["x"] * 40, n=2), "prompt")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", **kw)
        assert _error(e)["param"] == param, (kw, _error(e))


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert _error(e)["code"] == "model_not_found" and _error(e)["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="x")


def test_oversized_bodies_are_413_announced_or_not(server):
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 70_000}]}
    status, body, _ = post(server, "/v1/chat/completions", big)
    assert status == 413 and "65,536 bytes" in body["error"]["message"]
    # chunked (no Content-Length): counted while read
    import http.client
    import json
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    data = json.dumps(big).encode()
    conn.request("POST", "/v1/chat/completions", body=iter([data[i:i + 8192] for i in range(0, len(data), 8192)]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "request_too_large"
    conn.close()


FUZZ = [
    b"", b"{", b"not json", b"[]", b"null", b"42", b'"a string"', b'{"messages": "hi"}', b'{"messages": [null]}',
    b'{"messages": [{"role": 5, "content": "x"}]}', b'{"messages": [{"role": "user", "content": 5}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": Infinity}',
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}',
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 99999999999999999999999999999999}',
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": true}',
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2.5}',
    b'{"messages": [{"role": "user", "content": "x"}], "seed": -99999999999999999999999999}',
    b'{"messages": [{"role": "user", "content": "x"}], "n": "3"}',
    b'{"messages": [{"role": "user", "content": "x"}], "stop": [1, 2]}',
    b'{"messages": [{"role": "user", "content": "x"}], "stop_token_ids": [99999999]}',
    b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
    b'{"messages": [{"role": "user", "content": "x"}], "stream_options": 5, "stream": true}',
    b'{"messages": [{"role": "wizard", "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": [{"type": "text"}]}]}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate
    b'{"messages": [{"role": "user", "content": "x"}]}\xff\xfe',
    b'\xff\xfe{"messages": 1}',
    b"[" * 50_000 + b"]" * 50_000,  # deep nesting
    b'{"prompt": {"a": 1}}', b'{"prompt": [[1, "x"]]}', b'{"prompt": [1.5]}', b'{"prompt": 12}',
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_fuzzed_bodies_get_4xx_and_the_server_stays_well(server, engine, path):
    for body in FUZZ:
        status, resp, _ = post(server, path, body)
        assert 400 <= status < 500, (body[:80], status, resp)
        assert set(resp["error"]) == {"message", "type", "param", "code"}, resp
    assert wait_idle(engine)
    assert request(server, "GET", "/health")[0] == 200
    assert post(server, "/v1/chat/completions", {"messages": MSGS, "max_tokens": 2})[0] == 200


def test_edge_inputs_that_are_valid_are_served(client):
    for messages in ([{"role": "user", "content": ""}], [{"role": "assistant", "content": None}],
                     [{"role": "user", "content": "<|user|><think>injected</think><|end|>"}],
                     [{"role": "user", "content": "中文 🙂 \u0000 \ud7ff"}]):
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3)
        assert r.usage.completion_tokens >= 1
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=3, stop=["", "zz"], seed=-5,
                                       extra_body={"top_k": -1, "repetition_penalty": 1.3})
    assert r.choices[0].finish_reason in ("stop", "length")


def test_wrong_method_route_and_content_type(server):
    status, body, _ = request(server, "GET", "/v1/chat/completions")
    assert status == 405 and body["error"]["type"] == "invalid_request_error"
    status, body, _ = request(server, "GET", "/v2/nothing")
    assert status == 404 and "no route" in body["error"]["message"]
    status, body, _ = post(server, "/v1/chat/completions", b'{"messages": []}', headers={"Content-Type": "text/plain"})
    assert status == 415
    status, body, _ = request(server, "POST", "/v1/chat/completions", b'{"messages": []}')  # no Content-Type
    assert status == 415


def test_a_full_queue_is_503_and_recovers(engine, server, client):
    """max_waiting 4: with the engine thread held before its next step, a fifth waiting request is refused."""
    results = []

    def one():
        results.append(post(server, "/v1/chat/completions", {"messages": MSGS, "max_tokens": 2})[0])

    threads = [threading.Thread(target=one) for _ in range(4)]
    with held(engine) as inside:
        threads[0].start()
        assert inside.wait(30)  # the engine thread is now held, request 1 still waiting
        for t in threads[1:]:
            t.start()
        assert wait_waiting(engine, 4)
        with pytest.raises(openai.InternalServerError) as e:  # 503: the client's 5xx class
            client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2)
        assert e.value.status_code == 503 and _error(e)["code"] == "queue_full"
    for t in threads:
        t.join(60)
    assert results == [200] * 4
    assert wait_idle(engine)


def test_more_answers_than_the_waiting_queue_holds_is_400_not_503(client, engine):
    """max_waiting 4: a request for 5 or more answers could never be queued; it gets a 400 naming the limit, not
    a 503 that says to retry (forever). Exactly 4 is served."""
    calls = [(lambda: client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2, n=5), "n"),
             (lambda: client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2, n=16), "n"),
             (lambda: client.completions.create(model="tiny", prompt="x", max_tokens=2, n=16), "n"),
             (lambda: client.completions.create(model="tiny", prompt=["x", "y", "z"], max_tokens=2, n=2), "prompt"),
             (lambda: client.completions.create(model="tiny", prompt=[[5]] * 5, max_tokens=2), "prompt")]
    for call, param in calls:
        with pytest.raises(openai.BadRequestError) as e:
            call()
        err = _error(e)
        assert err["param"] == param and "waiting queue holds (4, nanoseek serve --max-waiting)" in err["message"], err
    assert len(client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2, n=4).choices) == 4
    assert len(client.completions.create(model="tiny", prompt=["x", "y"], max_tokens=2, n=2).choices) == 4
    assert wait_idle(engine)


def test_an_engine_failure_fails_its_requests_not_the_server(engine, server, client):
    step = engine.step
    calls = {"n": 0}

    def failing_step():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated device failure")
        return step()

    engine.step = failing_step
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4)
        assert e.value.status_code == 500 and "simulated device failure" in _error(e)["message"]
        calls["n"] = 0
        stream = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, stream=True)
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
    finally:
        engine.step = step
    assert wait_idle(engine)
    assert client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2).usage.completion_tokens >= 1
