"""Prometheus metrics, written in the text exposition format (version 0.0.4) by hand: a few counters, gauges
and histograms need no client library. The engine thread observes latencies while the event loop renders,
so every family takes one lock."""

from __future__ import annotations

import bisect
import math
import threading

# seconds; TTFT spans prefill of long prompts, inter-token latency one decode step
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
               1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


class Counter:
    """A counter with labels: inc(labels..., by=n)."""

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()):
        self.name, self.help, self.labelnames = name, help, labelnames
        self._values: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, by: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + by

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        for labels, v in items:
            out.append(f"{self.name}{_labels(dict(zip(self.labelnames, labels)))} {_num(v)}")
        return out


class Histogram:
    """Cumulative buckets, sum and count (observations in seconds)."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help, tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, v: float, n: int = 1) -> None:
        """Record v, n times (a step that delivers n tokens at once contributes n intervals)."""
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, v)] += n
            self._sum += v * n

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            counts, total = list(self._counts), self._sum
        acc = 0
        for le, c in zip((*self.buckets, math.inf), counts):
            acc += c
            out.append(f'{self.name}_bucket{{le="{_num(le)}"}} {acc}')
        out += [f"{self.name}_sum {_num(total)}", f"{self.name}_count {acc}"]
        return out


def gauge(name: str, help: str, value: float, kind: str = "gauge") -> list[str]:
    """A value read at scrape time (kind "counter" for totals the engine keeps itself)."""
    return [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {_num(value)}"]


class Metrics:
    """What the server records; `render(engine)` adds the engine's own counters and queue lengths."""

    def __init__(self):
        self.http_requests = Counter("nanoseek_http_requests_total", "HTTP requests by endpoint and status code.",
                                     ("endpoint", "status"))
        self.finished = Counter("nanoseek_requests_finished_total",
                                "Generation requests (one per choice) by how they ended: stop, length, abort, error.",
                                ("finish_reason",))
        self.ttft = Histogram("nanoseek_time_to_first_token_seconds",
                              "From the HTTP request's arrival to its first generated token.", TTFT_BUCKETS)
        self.itl = Histogram("nanoseek_inter_token_latency_seconds",
                             "Time between successive generated tokens of one request.", ITL_BUCKETS)
        self.e2e = Histogram("nanoseek_request_latency_seconds",
                             "From the HTTP request's arrival to its last token.", E2E_BUCKETS)

    def render(self, engine) -> str:
        s = engine.scheduler
        c = s.counters
        lines: list[str] = []
        lines += self.http_requests.render()
        lines += self.finished.render()
        lines += gauge("nanoseek_prompt_tokens_total", "Prompt tokens of admitted requests.", c.prompt_tokens,
                       "counter")
        lines += gauge("nanoseek_prompt_tokens_cached_total", "Prompt tokens taken from the prefix cache.",
                       c.prompt_tokens_cached, "counter")
        lines += gauge("nanoseek_generation_tokens_total", "Generated tokens.", c.generated_tokens, "counter")
        lines += gauge("nanoseek_engine_steps_total", "Scheduler steps run.", c.steps, "counter")
        lines += gauge("nanoseek_requests_waiting", "Requests in the engine's waiting queue.", s.num_waiting)
        lines += gauge("nanoseek_requests_running", "Requests holding a cache row (prefilling or decoding).",
                       s.num_running)
        lines += gauge("nanoseek_prefix_cache_hit_rate", "Share of prompt tokens served from the prefix cache.",
                       c.prefix_hit_rate)
        lines += self.ttft.render()
        lines += self.itl.render()
        lines += self.e2e.render()
        return "\n".join(lines) + "\n"
