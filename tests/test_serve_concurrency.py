"""Many clients at once and clients that leave: 32 concurrent streams each equal to the same request alone
(greedy), and a client that disconnects (streaming or not, decoding or still waiting) has its request aborted
and its cache row freed at the engine's next step: the scheduler goes idle."""

import asyncio
import json
import socket
import threading
import time

import openai
import pytest

from nanoseek.engine import Engine
from serve_helpers import held, post, random_checkpoint, running, sse_events, wait_idle, wait_waiting


@pytest.fixture(scope="module")
def engine():
    return Engine.load(random_checkpoint(), max_batch=32)


@pytest.fixture(scope="module")
def server(engine):
    with running(engine) as s:
        yield s


def _open_stream(server, body: dict) -> socket.socket:
    """Send a POST by hand and return the socket, so the test can drop the connection whenever it likes."""
    data = json.dumps(body).encode()
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def _read_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    got = b""
    while marker not in got and len(got) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


LONG = {"model": "tiny", "messages": [{"role": "user", "content": "The quick brown fox"}], "max_tokens": 400,
        "temperature": 0, "ignore_eos": True}


def _slow(engine, seconds: float):
    """Make each engine step take a little longer (a bigger model's step), so the test acts mid-answer."""
    step = engine.step

    def slow_step():
        time.sleep(seconds)
        return step()

    engine.step = slow_step
    return step


def test_a_client_that_disconnects_mid_stream_frees_its_row(engine, server):
    aborted = engine.scheduler.counters.aborted
    step = _slow(engine, 0.005)
    try:
        sock = _open_stream(server, {**LONG, "stream": True})
        head = b""
        while head.count(b"data: ") < 3:  # the role chunk, then two chunks of generated text
            head += sock.recv(4096)
        assert b"200 OK" in head and b"text/event-stream" in head
        generated = engine.scheduler.counters.generated_tokens
        assert engine.scheduler.num_running == 1
        sock.close()
        assert wait_idle(engine), "the engine kept the request after its client left"
    finally:
        engine.step = step
    assert engine.scheduler.counters.aborted == aborted + 1
    assert engine.scheduler.counters.generated_tokens - generated < 400  # stopped well before max_tokens
    assert engine.slots.n_decoding == 0


def test_a_non_streaming_client_that_disconnects_frees_its_row(engine, server):
    aborted = engine.scheduler.counters.aborted
    step = _slow(engine, 0.005)
    try:
        sock = _open_stream(server, LONG)
        t0 = time.monotonic()
        while engine.scheduler.num_running == 0 and time.monotonic() - t0 < 10:
            time.sleep(0.005)
        assert engine.scheduler.num_running == 1
        sock.close()
        assert wait_idle(engine)
    finally:
        engine.step = step
    assert engine.scheduler.counters.aborted == aborted + 1


def test_a_client_that_leaves_while_its_request_waits_is_dropped(engine, server):
    """The engine thread is held before a step, so the request sits in the waiting queue when its client goes."""
    with held(engine) as inside:
        sock = _open_stream(server, {**LONG, "stream": True})
        assert inside.wait(10)
        sock.close()
        time.sleep(0.3)  # the server notices the disconnect and asks for the abort
    assert wait_idle(engine)
    assert engine.scheduler.counters.finished + engine.scheduler.counters.aborted == engine.scheduler.counters.requests


async def _stream_all(url: str, bodies: list[dict]) -> list[tuple[str, int, str]]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)

    async def one(body):
        text, usage, finish = "", None, None
        async for c in await client.chat.completions.create(**body, stream=True,
                                                             stream_options={"include_usage": True}):
            if c.usage is not None:
                usage = c.usage.completion_tokens
            for ch in c.choices:
                text += ch.delta.content or ""
                finish = ch.finish_reason or finish
        return text, usage, finish

    try:
        return await asyncio.gather(*(one(b) for b in bodies))
    finally:
        await client.close()


def test_32_concurrent_streams_each_equal_the_request_alone(engine, server):
    words = "The quick brown fox jumps over the lazy dog Another line of text".split()
    bodies = [{"model": "tiny", "messages": [{"role": "user", "content": " ".join(words[i % 7:i % 7 + 2 + i % 9])}],
               "max_tokens": 8 + (i * 5) % 17, "temperature": 0, "extra_body": {"ignore_eos": True}} for i in range(32)]
    alone = [asyncio.run(_stream_all(server.url, [b]))[0] for b in bodies]  # one at a time
    steps = engine.scheduler.counters.steps
    t0 = time.perf_counter()
    together = asyncio.run(_stream_all(server.url, bodies))
    wall = time.perf_counter() - t0
    assert together == alone
    assert all(u == b["max_tokens"] and f == "length" for (_, u, f), b in zip(together, bodies))
    # they really ran together: far fewer steps than one request after another would take
    assert engine.scheduler.counters.steps - steps < sum(b["max_tokens"] for b in bodies) / 4, wall
    assert wait_idle(engine)


def test_concurrent_non_streaming_requests_and_prefix_sharing(engine, server):
    prefix = "Another line of text. " * 5
    bodies = [{"messages": [{"role": "user", "content": prefix + w}], "max_tokens": 6, "temperature": 0,
               "ignore_eos": True} for w in ("a", "b", "c", "d", "e", "f", "g", "h")]
    first = post(server, "/v1/chat/completions", bodies[0])[1]
    results = [None] * len(bodies)

    def one(i):
        results[i] = post(server, "/v1/chat/completions", bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r[0] == 200 for r in results)
    assert results[0][1]["choices"][0]["message"] == first["choices"][0]["message"]
    assert sum(r[1]["usage"]["prompt_tokens_details"]["cached_tokens"] for r in results) > 0


# ---- one bad request fails only itself ----------------------------------------------------------------------
def _together(server, engine, bodies: list[dict]) -> list[tuple]:
    """POST the bodies to /v1/chat/completions so that one engine step admits them all (one batch); returns
    (status, JSON or SSE text) of each."""
    results = [None] * len(bodies)

    def one(i):
        results[i] = post(server, "/v1/chat/completions", bodies[i], timeout=120)[:2]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    with held(engine) as inside:
        threads[0].start()
        assert inside.wait(30)
        for t in threads[1:]:
            t.start()
        assert wait_waiting(engine, len(bodies))
    for t in threads:
        t.join(120)
    return results


def _stream_ok(status, raw) -> list[str]:
    """A stream that ended well: its finish reasons (no error event)."""
    events = sse_events(raw)
    assert status == 200 and events[-1] == "[DONE]", raw[-300:]
    assert not any("error" in e for e in events[:-1]), raw[-300:]
    return [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]


BASE = {"model": "tiny", "messages": [{"role": "user", "content": "Another line"}], "max_tokens": 6, "seed": 3}
# each overflows float32 where it divides or truncates (logits / 1e-300 = inf; 1e-300 rounds to 0)
UNDERFLOW = [{"temperature": 1e-300}, {"temperature": 5e-324}, {"top_p": 1e-300}, {"top_p": 5e-324},
             {"repetition_penalty": 1e-300}, {"temperature": 0.5, "repetition_penalty": 5e-324},
             {"temperature": 1e-300, "top_p": 1e-300, "repetition_penalty": 1e-300}]


def test_sampling_values_that_underflow_sample_greedily_beside_other_requests(engine, server):
    """Tiny temperatures (and top_p) sample greedily, a tiny repetition penalty still gives a distribution, and
    a stream in the same batch is untouched."""
    greedy = post(server, "/v1/chat/completions", {**BASE, "temperature": 0})[1]["choices"][0]["message"]
    results = _together(server, engine, [{**LONG, "max_tokens": 40, "stream": True}]
                        + [{**BASE, **kw} for kw in UNDERFLOW])
    assert _stream_ok(*results[0]) == ["length"]
    for (status, body), kw in zip(results[1:], UNDERFLOW):
        assert status == 200, (kw, body)
        if "repetition_penalty" not in kw:
            assert body["choices"][0]["message"] == greedy, kw
    assert wait_idle(engine)


@pytest.mark.parametrize("speculative", [0, 2])
def test_a_request_whose_sampling_fails_fails_alone(monkeypatch, speculative):
    """A request whose sampler raises mid-answer (plain decoding, or a speculative round) gets a 500 (a stream:
    an error event), and the requests in its batch go on; its cache row is freed."""
    from nanoseek.engine.sampling import Sampler

    probs = Sampler.probs

    def failing(self, logits):
        self.calls = getattr(self, "calls", 0) + 1
        if self.params.seed == 666 and self.calls > 2:  # after its first tokens: while decoding
            raise RuntimeError("simulated sampling failure")
        return probs(self, logits)

    monkeypatch.setattr(Sampler, "probs", failing)
    engine = Engine.load(random_checkpoint(), speculative=speculative)
    bad, ok = {**BASE, "temperature": 0.8, "seed": 666}, {**BASE, "temperature": 0.8, "seed": 1}
    with running(engine) as server:
        results = _together(server, engine, [{**LONG, "max_tokens": 30, "stream": True}, bad, ok,
                                             {**bad, "stream": True}])
        assert _stream_ok(*results[0]) == ["length"]
        status, body = results[1]
        assert status == 500 and "simulated sampling failure" in body["error"]["message"], body
        assert body["error"]["type"] == "server_error"
        assert results[2][0] == 200 and results[2][1]["usage"]["completion_tokens"] >= 1, results[2]
        events = sse_events(results[3][1])
        assert "simulated sampling failure" in events[-2]["error"]["message"] and events[-1] == "[DONE]"
        assert wait_idle(engine) and engine.slots.n_decoding == 0
        assert engine.scheduler.counters.failed == 2


def test_a_failed_forward_fails_the_requests_in_it_not_those_waiting():
    """max_batch 1: the first request decodes while the second waits; a decode step that raises fails the
    first (500) and the second then runs (200)."""
    engine = Engine.load(random_checkpoint(), max_batch=1)
    decode, calls = engine.runner.decode, []

    def failing(requests):
        calls.append(len(requests))
        if len(calls) == 1:
            raise RuntimeError("simulated device failure")
        return decode(requests)

    engine.runner.decode = failing
    with running(engine) as server:
        first, second = _together(server, engine, [BASE, {**BASE, "seed": 4}])
        assert first[0] == 500 and "simulated device failure" in first[1]["error"]["message"], first
        assert second[0] == 200 and second[1]["usage"]["completion_tokens"] >= 1, second
        assert wait_idle(engine)
        assert post(server, "/v1/chat/completions", BASE)[0] == 200
