"""Soak test of `nanoseek serve` with prompts far past the context: the server's memory and /health meanwhile.

Issue 22 (break-it, round 2) reported that a 1.9M-character prompt was tokenized in full (~1.8 s) before it was
refused for its length, that /health took 3.1 s with four of them in flight, and that the server's memory grew
from 1.1 GB to 5.6 GB over the session. The server now refuses a prompt with more characters than the context
can hold (tokens x the tokenizer's longest token in characters) before tokenizing it.

Two phases, each `--requests` chat requests sent `--concurrency` at a time:
  huge       prompts of `--chars` characters (default 1.9M: under the default 2 MiB body limit)
  tokenized  prompts just under the server's character bound: tokenized, then refused for their token count
             (the largest prompts that still reach the tokenizer)
For each phase it prints the server process's resident memory (VmRSS from /proc) before, at its peak and after,
the requests' statuses and latency, and /health's latency while they are in flight (one probe every 50 ms).

    python benchmarks/bench_soak.py                              # 1,000 requests per phase, cpu-small
    python benchmarks/bench_soak.py --requests 50 --phases huge  # a quick look
    python benchmarks/bench_soak.py --server-path /tmp/old-nanoseek --phases huge   # the same on another checkout

`--server-path DIR` runs the server from another checkout of nanoseek (its PYTHONPATH), e.g. one from before the
character bound, to see what the huge prompts cost there.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_serve import build_checkpoint, cpu_facts, free_port, pct, start_server


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def char_bound(ckpt: Path) -> int:
    """The server's Engine.max_prompt_chars for this checkpoint at the default max_len."""
    from nanoseek.config import ModelConfig
    from nanoseek.tokenizer import Tokenizer

    max_len = min(ModelConfig.load(ckpt).max_position_embeddings, 8192)
    return max_len * int(Tokenizer.load(ckpt).token_bytes().max())


def post(port: int, body: bytes) -> tuple[int, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - t0
    finally:
        conn.close()


def run_phase(port: int, pid: int, prompt: str, requests: int, concurrency: int) -> dict:
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": 1}).encode()
    before = rss_mb(pid)
    peak, health, done = [before], [], threading.Event()

    def watch() -> None:  # memory and /health while the requests run
        while not done.is_set():
            peak.append(rss_mb(pid))
            t0 = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", "/health")
                conn.getresponse().read()
                conn.close()
                health.append(time.perf_counter() - t0)
            except OSError:
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: post(port, body), range(requests)))
    wall = time.perf_counter() - t0
    done.set()
    watcher.join()
    time.sleep(1.0)  # let the server settle
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    lat = [s for _, s in results]
    return {"prompt_chars": len(prompt), "requests": requests, "concurrency": concurrency, "wall_s": wall,
            "statuses": statuses, "latency_p50_s": pct(lat, 50), "latency_max_s": max(lat),
            "health_p50_s": pct(health, 50), "health_p99_s": pct(health, 99), "health_max_s": max(health, default=0),
            "rss_before_mb": before, "rss_peak_mb": max(peak), "rss_after_mb": rss_mb(pid)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per phase (default 1000)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    ap.add_argument("--chars", type=int, default=1_900_000, help="characters of a huge prompt (default 1.9M)")
    ap.add_argument("--phases", nargs="+", default=["huge", "tokenized"], choices=["huge", "tokenized"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server process")
    ap.add_argument("--checkpoint", help="serve this checkpoint instead of a fresh random cpu-small")
    ap.add_argument("--server-path", help="run the server from this nanoseek checkout (its PYTHONPATH)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    facts = cpu_facts()
    if args.checkpoint:
        args.checkpoint = str(Path(args.checkpoint).resolve())
    if args.server_path:  # `python -m` puts the working directory first on the path: run from there too
        os.environ["PYTHONPATH"] = str(Path(args.server_path).resolve()) + os.pathsep + os.environ.get("PYTHONPATH", "")
        os.chdir(args.server_path)
    unit = "The quick brown fox jumps over the lazy dog. "
    phases = {}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else build_checkpoint(Path(tmp))[0]
        bound = char_bound(ckpt)
        sizes = {"huge": args.chars, "tokenized": bound - 1}
        port = free_port()
        proc = start_server(ckpt, port, args.threads, 32)
        try:
            for name in args.phases:
                prompt = (unit * (sizes[name] // len(unit) + 1))[:sizes[name]]
                ph = phases[name] = run_phase(port, proc.pid, prompt, args.requests, args.concurrency)
                print(f"{name}: {ph['requests']} requests of {ph['prompt_chars']:,} characters, {ph['concurrency']} "
                      f"at a time, in {ph['wall_s']:.1f} s (statuses {ph['statuses']}; latency p50 "
                      f"{ph['latency_p50_s'] * 1e3:.0f} ms, max {ph['latency_max_s'] * 1e3:.0f} ms); /health p50 "
                      f"{ph['health_p50_s'] * 1e3:.1f} ms, p99 {ph['health_p99_s'] * 1e3:.1f} ms, max "
                      f"{ph['health_max_s'] * 1e3:.1f} ms; server RSS {ph['rss_before_mb']:.0f} MB before, "
                      f"{ph['rss_peak_mb']:.0f} MB at its peak, {ph['rss_after_mb']:.0f} MB after", flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except Exception:
                proc.kill()
    facts["loadavg_after"] = os.getloadavg()
    print(f"character bound of this checkpoint: {bound:,}; CPU: {facts['cpu']} ({facts['cores']} cores); server "
          f"--threads {args.threads}{' from ' + args.server_path if args.server_path else ''}; load average before "
          f"{facts['loadavg'][0]:.2f}, after {facts['loadavg_after'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"facts": facts, "phases": phases, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
