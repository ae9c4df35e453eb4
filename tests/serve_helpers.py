"""Shared by the server tests: tiny checkpoints with a trained tokenizer, a server in a thread, raw HTTP.

Two checkpoints, each built once per test process:
- `random_checkpoint()`: the tiny preset with random weights (output is arbitrary but deterministic when
  greedy); what most API tests run against.
- `taught_checkpoint()`: the same shape trained for a few seconds to memorize two chats, so its greedy
  answers are known: "hi" gets reasoning, then markdown with a code block (REASONING, ANSWER), and "count"
  after that exchange gets " ab" repeated with no end of turn learned (a long answer to stop). Nothing is faked: it is a real
  model through the real engine; it has only learned what to say.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

import nanoseek
from nanoseek.config import preset
from nanoseek.engine import Engine
from nanoseek.serve import ServerConfig, ServerThread, create_app
from nanoseek.tokenizer import Tokenizer

CORPUS = ["The quick brown fox jumps over the lazy dog. Héllo wörld 中文 🙂.", "Another line of text.",
          "print(x) ```python``` **bold** the user says hi, hello world! count ab ab ab"] * 20
REASONING = "The user says hi."
ANSWER = "Hello **world**!\n\n```python\nprint(1 < 2)\n```\n<script>alert(1)</script>"
LOOP = " ab"


def _tmpdir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, d, True)
    return d


@functools.cache
def random_checkpoint() -> Path:
    tok = Tokenizer.train(CORPUS, vocab_size=300)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size))
    path = _tmpdir("nanoseek-serve-random-") / "tiny"
    nanoseek.save_model(model, path)
    tok.save(path)
    return path


@functools.cache
def taught_checkpoint(steps: int = 150) -> Path:
    tok = Tokenizer.train(CORPUS, vocab_size=300)
    hi = [{"role": "user", "content": "hi"}]
    chats = [  # the second is the page's second turn (it sends earlier answers back without their reasoning)
        hi + [{"role": "assistant", "reasoning": REASONING, "content": ANSWER}],
        hi + [{"role": "assistant", "content": ANSWER}, {"role": "user", "content": "count"},
              {"role": "assistant", "content": LOOP * 40}],
    ]
    batch = []
    for i, chat in enumerate(chats):
        ids, mask = tok.render_chat(chat)
        if i == 1:  # learn only the last answer, and never its end: the model learns to keep going
            last = len(ids) - 1 - ids[::-1].index(tok.assistant_id)
            ids, mask = ids[:-1], [0] * (last + 1) + mask[last + 1:-1]
        x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
        batch.append((x, torch.where(torch.tensor([mask[1:]]).bool(), y, -100)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
        for _ in range(steps):  # ~3 s on one core; final loss ~0.04
            loss = sum(model(x, targets=y).main_loss for x, y in batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            decay.step()
    path = _tmpdir("nanoseek-serve-taught-") / "taught"
    nanoseek.save_model(model, path)
    tok.save(path)
    return path


@contextlib.contextmanager
def running(engine: Engine, **config):
    """The app for `engine` on a free 127.0.0.1 port, in a thread; yields the ServerThread."""
    config.setdefault("model_name", "tiny")
    app = create_app(engine, ServerConfig(**config))
    with ServerThread(app) as server:
        server.app = app
        yield server


def post(server, path: str, body, headers: dict | None = None, timeout: float = 60.0):
    """POST raw bytes (or JSON-encoded `body`); returns (status, parsed JSON or text, headers)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    return request(server, "POST", path, data, h, timeout)


def request(server, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
            timeout: float = 60.0):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        return resp.status, payload, dict(resp.getheaders())
    finally:
        conn.close()


def sse_events(raw: str) -> list:
    """The data payloads of an SSE body: JSON objects, and the string "[DONE]"."""
    out = []
    for event in raw.split("\n\n"):
        for line in event.split("\n"):
            if line.startswith("data: "):
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def wait_idle(engine: Engine, timeout: float = 10.0) -> bool:
    """True once the engine has no request left (the engine thread steps it; we only watch)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not engine.has_work and engine.scheduler.num_running == 0:
            return True
        time.sleep(0.01)
    return False


@contextlib.contextmanager
def held(engine: Engine):
    """Hold the engine thread before its next step until the block ends (yields an Event set once it waits
    there): requests sent meanwhile wait together, and one step admits them all."""
    gate, inside = threading.Event(), threading.Event()
    step = engine.step

    def held_step():
        inside.set()
        gate.wait(30)
        return step()

    engine.step = held_step
    try:
        yield inside
    finally:
        engine.step = step
        gate.set()


def wait_waiting(engine: Engine, n: int, timeout: float = 30.0) -> bool:
    """True once n requests wait in the engine (queued, not yet admitted)."""
    t0 = time.monotonic()
    while engine.scheduler.num_waiting < n:
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.01)
    return True
