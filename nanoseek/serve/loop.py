"""The engine thread: the only caller of `engine.step()`, so the event loop never waits on model compute.

HTTP handlers (on the asyncio event loop) validate a request, `submit` its engine requests and await their
Deltas on an asyncio.Queue; this thread steps the engine while it has work, hands each Delta to its queue
with `call_soon_threadsafe`, and sleeps on an Event when there is none. A handler whose client goes away
calls `abort`: the engine drops the request and frees its cache row at the next step.

A request whose own step fails (its sampling, or a forward of the batch it was in) ends in the engine with
finish_reason "error": its client alone gets a 500-style error, the other requests go on. If a whole step
raises (a bug in the scheduler itself), every request in flight gets an `EngineFailure` in its queue (a 500
instead of hanging), and the engine's requests are aborted so the next requests start on a clean slate.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field

from nanoseek.engine.request import Delta, Request
from nanoseek.serve.metrics import Metrics

log = logging.getLogger("nanoseek.serve")
# engine -> (a weak reference to) the EngineLoop stepping it: two loops on one engine would race in its scheduler
_STEPPED_BY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class EngineFailure:
    """Put in a request's queue instead of a Delta when the engine failed under it."""

    message: str


@dataclass
class _Watch:
    """What the engine thread knows of one submitted request."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    arrival: float  # time.perf_counter() when the HTTP request arrived
    first: float | None = None  # time of the first token of any of its requests
    last: dict = field(default_factory=dict)  # request id -> time of its last token


def check_not_stepped(engine, by: EngineLoop | None = None) -> None:
    """RuntimeError when a running EngineLoop (other than `by`) already steps this engine."""
    ref = _STEPPED_BY.get(engine)
    owner = ref() if ref is not None else None
    if owner is not None and owner is not by and owner.alive:
        raise RuntimeError("this Engine is already stepped by another running server; give each app its own "
                           "Engine (steps of one engine from two threads would race)")


class EngineLoop:
    def __init__(self, engine, metrics: Metrics | None = None, idle_wait: float = 0.1):
        self.engine = engine
        self.metrics = metrics or Metrics()
        self.idle_wait = idle_wait
        self._watch: dict = {}  # request id -> _Watch
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # steps that raised

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread. RuntimeError when another running EngineLoop already steps this engine (two
        apps on one Engine): give each app its own Engine."""
        check_not_stepped(self.engine, self)
        _STEPPED_BY[self.engine] = weakref.ref(self)  # not keeping the loop (which holds the engine) alive
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="nanoseek-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            watches = {id(w): w for w in self._watch.values()}.values()
            self._watch.clear()
        for w in watches:
            _put(w, EngineFailure("the server is shutting down"))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- from the event loop -------------------------------------------------------------------------------
    def submit(self, requests: list[Request], arrival: float) -> asyncio.Queue:
        """Queue engine requests (all or none); their Deltas (or an EngineFailure) arrive on the returned queue.
        Raises QueueFullError (HTTP 503) when the engine's waiting queue cannot take them all."""
        w = _Watch(asyncio.get_running_loop(), asyncio.Queue(), arrival)
        added = []
        with self._lock:
            for r in requests:
                self._watch[r.id] = w
        try:
            for r in requests:
                self.engine.add_request(r)
                added.append(r.id)
        except BaseException:
            with self._lock:
                for r in requests:
                    self._watch.pop(r.id, None)
            for rid in added:
                self.engine.abort(rid)
            self._wake.set()
            raise
        self._wake.set()
        return w.queue

    def abort(self, rids) -> None:
        """End these requests (client gone, or asked); unknown and finished ids are ignored."""
        for rid in rids:
            self.engine.abort(rid)
        self._wake.set()

    # ---- the engine thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        while not self._stop.is_set():
            if not engine.has_work:
                self._wake.wait(self.idle_wait)
                self._wake.clear()
                continue
            try:
                deltas = engine.step()
            except Exception as e:  # keep serving: fail the requests in flight, not the server
                log.exception("engine step failed")
                self.failures += 1
                self._fail_all(f"the engine failed while generating ({type(e).__name__}: {e})")
                continue
            now = time.perf_counter()
            # one wake-up per event loop per step, not one per Delta: at 64 running requests that is 64x fewer
            # self-pipe writes and callbacks on the event loop
            batches: dict = {}
            for d in deltas:
                w = self._record(d, now)
                if w is not None:
                    batches.setdefault(w.loop, []).append((w.queue, d))
            for loop, items in batches.items():
                try:
                    loop.call_soon_threadsafe(_put_all, items)
                except RuntimeError:  # that event loop is closed: nobody is waiting any more
                    pass

    def _record(self, d: Delta, now: float) -> _Watch | None:
        """Metrics for one Delta; returns the watch it goes to (None if its request is not ours)."""
        with self._lock:
            w = self._watch.get(d.index)
            if w is not None and d.finish_reason is not None:
                del self._watch[d.index]
        if w is None:
            return None
        m = self.metrics
        n = len(d.token_ids)
        if n:
            if w.first is None:
                w.first = now
                m.ttft.observe(now - w.arrival)
            last = w.last.get(d.index)
            if last is None:
                if n > 1:  # several tokens in one step (speculative decoding): they arrived together
                    m.itl.observe(0.0, n - 1)
            else:
                m.itl.observe((now - last) / n, n)
            w.last[d.index] = now
        if d.finish_reason is not None:
            m.finished.inc(d.finish_reason)
            m.e2e.observe(now - w.arrival)
        return w

    def _fail_all(self, message: str) -> None:
        with self._lock:
            watch, self._watch = self._watch, {}
        for rid in watch:
            self.engine.abort(rid)
            self.metrics.finished.inc("error")
        try:  # let the scheduler drop them and free their rows
            self.engine.step()
        except Exception:
            log.exception("engine step failed again while aborting the failed requests")
        for w in {id(w): w for w in watch.values()}.values():
            _put(w, EngineFailure(message))


def _put_all(items) -> None:
    for queue, d in items:
        queue.put_nowait(d)


def _put(w: _Watch, item) -> None:
    try:
        w.loop.call_soon_threadsafe(w.queue.put_nowait, item)
    except RuntimeError:  # the event loop is closed: nobody is waiting any more
        pass
