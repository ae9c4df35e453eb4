"""Load benchmark of `nanoseek serve` on loopback: concurrent streaming clients, bounded in requests and time.

The server runs as its own process (`python -m nanoseek.cli serve`, as a user starts it) on a `cpu-small`
checkpoint with random weights (vocab from a tokenizer trained here on the repository's own text); answer
lengths are forced with `ignore_eos` + `max_tokens`. The clients are plain asyncio HTTP/1.1 connections in
this process (no client library's per-chunk cost), each sending chat requests one after another with mixed
prompt lengths (16-256 tokens) and answer lengths (32-128 tokens), streamed with `include_usage`.

For each number of concurrent clients N it reports aggregate output tokens/s (completion tokens from usage /
wall time of the level), time to first token and inter-token latency (gaps between streamed chunks) p50 and
p99. A multi-turn workload (conversations whose every turn resends the whole history) then reports the
prefix-cache hit rate (cached / prompt tokens, from the server's /metrics). Every level stops at
`--requests-per-client` requests per client or `--level-seconds`, whichever comes first.

The server runs with its default settings (compiled decode steps, speculation auto); `--eager` serves
without compiling. `--only-startup` instead times two starts of the server on one checkpoint with an empty
compile cache of their own (seconds from launching the process to /health answering 200): the first compiles,
the second compiles from the cache.

    python benchmarks/bench_serve.py --threads 1                       # ~3 minutes on 2 cores
    python benchmarks/bench_serve.py --threads 1 --clients 1 16 --requests-per-client 2
    python benchmarks/bench_serve.py --threads 2 --only-startup
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---- the checkpoint and the server ----------------------------------------------------------------------------
def build_checkpoint(folder: Path) -> tuple[Path, list[str]]:
    """cpu-small with random weights and a tokenizer trained on the repository's text; returns its path and a
    list of words to build prompts from."""
    import torch

    import nanoseek
    from nanoseek.config import preset
    from nanoseek.tokenizer import Tokenizer

    texts = [p.read_text() for p in sorted((REPO / "nanoseek").rglob("*.py")) + sorted((REPO / "docs").glob("*.md"))]
    tok = Tokenizer.train(texts, vocab_size=8192)
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("cpu-small", vocab_size=tok.vocab_size))
    path = folder / "cpu-small"
    nanoseek.save_model(model, path)
    tok.save(path)
    words = re.findall(r"[A-Za-z]{3,12}", " ".join(texts))
    return path, words


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: Path, port: int, threads: int, max_batch: int, eager: bool = False,
                 env: dict | None = None) -> subprocess.Popen:
    env = {**(env or os.environ), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "nanoseek.cli", "serve", "--checkpoint", str(ckpt), "--port", str(port),
           "--threads", str(threads), "--max-batch", str(max_batch), "--log-level", "warning", "--model-name", "bench"]
    proc = subprocess.Popen(cmd + (["--eager"] if eager else []), env=env, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 600:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()}")
    proc.kill()
    raise SystemExit("the server did not come up within 600 s")


def time_startups(ckpt: Path, threads: int, max_batch: int, cache: Path) -> list[float]:
    """Seconds from launching `nanoseek serve` to /health 200, twice, with this (empty) compile cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["NANOSEEK_CACHE_DIR"] = str(cache)
    out = []
    for _ in range(2):
        t0 = time.monotonic()
        proc = start_server(ckpt, free_port(), threads, max_batch, env=env)
        out.append(time.monotonic() - t0)
        proc.terminate()
        try:
            err = proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = ""
        said = re.search(r"compiled in (\d+) ?s", err)
        print(f"start {len(out)}: ready in {out[-1]:.1f} s"
              + (f" (the engine's compile warm-up: {said.group(1)} s)" if said else ""), flush=True)
    return out


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# ---- a minimal streaming client -------------------------------------------------------------------------------
async def stream_chat(port: int, body: dict) -> dict:
    """POST one streaming chat request; returns its timings (seconds) and usage."""
    data = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
    await writer.drain()
    status = (await reader.readline()).decode()
    if " 200 " not in status:
        rest = await reader.read()
        raise RuntimeError(f"{status.strip()}: {rest[-300:]!r}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        chunked |= line.lower().startswith(b"transfer-encoding: chunked")
    times, usage, text, buf = [], None, [], b""
    while True:
        if chunked:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            piece = await reader.readexactly(size)
            await reader.readline()
        else:
            piece = await reader.read(65536)
            if not piece:
                break
        now = time.perf_counter()
        buf += piece
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            payload = event.decode()[len("data: "):]
            if payload == "[DONE]":
                continue
            obj = json.loads(payload)
            if obj.get("usage"):
                usage = obj["usage"]
            for c in obj["choices"]:
                d = c["delta"]
                if d.get("content") or d.get("reasoning_content"):
                    times.append(now)
                    text.append(d.get("content") or "")
    writer.close()
    return {"start": t0, "token_times": times, "usage": usage, "text": "".join(text)}


def prompt_text(rng: random.Random, words: list[str], n_words: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n_words))


async def run_level(port: int, n_clients: int, words: list[str], requests_per_client: int, seconds: float,
                    seed: int) -> dict:
    deadline = time.perf_counter() + seconds
    results: list[dict] = []

    async def client(i: int):
        rng = random.Random(seed * 1000 + i)
        for _ in range(requests_per_client):
            if time.perf_counter() > deadline:
                return
            body = {"model": "bench", "temperature": 0, "ignore_eos": True,
                    "max_tokens": rng.choice((32, 64, 96, 128)),
                    "messages": [{"role": "user", "content": prompt_text(rng, words, rng.randint(12, 200))}]}
            results.append(await stream_chat(port, body))

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(n_clients)))
    wall = time.perf_counter() - t0
    ttft = [r["token_times"][0] - r["start"] for r in results if r["token_times"]]
    itl = [b - a for r in results for a, b in zip(r["token_times"], r["token_times"][1:])]
    out_tokens = sum(r["usage"]["completion_tokens"] for r in results)
    return {"clients": n_clients, "requests": len(results), "wall_s": wall, "output_tokens": out_tokens,
            "tokens_per_s": out_tokens / wall, "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
            "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99),
            "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in results)}


async def run_multi_turn(port: int, words: list[str], conversations: int, turns: int, seed: int) -> dict:
    before = scrape(port)

    async def conversation(i: int):
        rng = random.Random(seed + i)
        messages = [{"role": "system", "content": prompt_text(rng, words, 60)}]
        cached = prompt = 0
        for _ in range(turns):
            messages.append({"role": "user", "content": prompt_text(rng, words, rng.randint(10, 40))})
            r = await stream_chat(port, {"model": "bench", "temperature": 0, "ignore_eos": True, "max_tokens": 32,
                                         "messages": messages})
            messages.append({"role": "assistant", "content": r["text"]})
            prompt += r["usage"]["prompt_tokens"]
            cached += r["usage"]["prompt_tokens_details"]["cached_tokens"]
        return prompt, cached

    t0 = time.perf_counter()
    sums = await asyncio.gather(*(conversation(i) for i in range(conversations)))
    wall = time.perf_counter() - t0
    after = scrape(port)
    d = {k: after[k] - before.get(k, 0.0) for k in ("nanoseek_prompt_tokens_total", "nanoseek_prompt_tokens_cached_total")}
    return {"conversations": conversations, "turns": turns, "wall_s": wall,
            "prompt_tokens": d["nanoseek_prompt_tokens_total"], "cached_tokens": d["nanoseek_prompt_tokens_cached_total"],
            "hit_rate": d["nanoseek_prompt_tokens_cached_total"] / max(d["nanoseek_prompt_tokens_total"], 1),
            "usage_hit_rate": sum(c for _, c in sums) / max(sum(p for p, _ in sums), 1)}


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def cpu_facts() -> dict:
    model, amx = platform.processor() or "?", False
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        model = m.group(1).strip() if m else model
        amx = "amx_bf16" in out
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": model, "amx_bf16": amx, "cores": os.cpu_count(), "loadavg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--level-seconds", type=float, default=60.0, help="no new request after this, per level")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server process")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--checkpoint", help="serve this checkpoint instead of a fresh random cpu-small")
    ap.add_argument("--eager", action="store_true", help="serve without compiling the decode steps")
    ap.add_argument("--only-startup", action="store_true", help="time a first and a second start, nothing else")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    facts = cpu_facts()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if args.checkpoint:
            ckpt, words = Path(args.checkpoint), re.findall(r"[A-Za-z]{3,12}", (REPO / "README.md").read_text())
        else:
            ckpt, words = build_checkpoint(Path(tmp))
        if args.only_startup:
            time_startups(ckpt, args.threads, args.max_batch, Path(tmp) / "cache")
            print(f"CPU: {facts['cpu']} ({facts['cores']} cores), amx_bf16 "
                  f"{'listed' if facts['amx_bf16'] else 'not listed'}; server --threads {args.threads}")
            return
        port = free_port()
        proc = start_server(ckpt, port, args.threads, args.max_batch, eager=args.eager)
        try:
            asyncio.run(run_level(port, 2, words, 1, 30, seed=99))  # warm-up: allocator, first-call paths
            levels = []
            for n in args.clients:
                lv = asyncio.run(run_level(port, n, words, args.requests_per_client, args.level_seconds, seed=n))
                levels.append(lv)
                print(f"{n:3d} clients: {lv['requests']:3d} requests, {lv['output_tokens']:6d} tokens in "
                      f"{lv['wall_s']:6.1f} s = {lv['tokens_per_s']:7.1f} tok/s; TTFT p50 {lv['ttft_p50'] * 1e3:7.1f} ms "
                      f"p99 {lv['ttft_p99'] * 1e3:7.1f} ms; ITL p50 {lv['itl_p50'] * 1e3:6.1f} ms "
                      f"p99 {lv['itl_p99'] * 1e3:6.1f} ms", flush=True)
            mt = asyncio.run(run_multi_turn(port, words, args.conversations, args.turns, seed=7))
            print(f"multi-turn: {mt['conversations']} conversations x {mt['turns']} turns, prefix-cache hit rate "
                  f"{mt['hit_rate']:.1%} of {mt['prompt_tokens']:.0f} prompt tokens (usage says "
                  f"{mt['usage_hit_rate']:.1%}), {mt['wall_s']:.1f} s", flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    base = next((lv for lv in levels if lv["clients"] == 1), None)
    if base:
        for lv in levels:
            print(f"  {lv['clients']:3d} clients: {lv['tokens_per_s'] / base['tokens_per_s']:.2f}x the single client")
    facts["loadavg_after"] = os.getloadavg()
    print(f"CPU: {facts['cpu']} ({facts['cores']} cores), amx_bf16 {'listed' if facts['amx_bf16'] else 'not listed'}; "
          f"server --threads {args.threads}; load average before {facts['loadavg'][0]:.2f}, after "
          f"{facts['loadavg_after'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"facts": facts, "levels": levels, "multi_turn": mt,
                                               "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
