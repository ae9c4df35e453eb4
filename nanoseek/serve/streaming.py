"""One HTTP request's generation: its engine requests, their Deltas, and what happens when the client leaves.

A client that disconnects is noticed by a task that waits on the ASGI `receive` channel for
`http.disconnect`, whatever the generation is doing (waiting in the queue, prefilling, between tokens), and
its requests are aborted at once; the engine frees their cache rows at its next step. Streams use Server-Sent
Events: `data: {json}` per chunk, `data: [DONE]` at the end.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import AsyncIterator, Callable

import anyio
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from nanoseek.engine.request import Delta, Request
from nanoseek.serve.errors import error_response
from nanoseek.serve.loop import EngineFailure, EngineLoop


class EngineFailed(Exception):
    """The engine failed under this request (answered as a 500 / a stream error event)."""


class ClientGone(Exception):
    """The client disconnected before the answer was complete."""


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client has gone (the request body must already have been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class Generation:
    """The engine requests one HTTP request asked for (n choices of each prompt), in choice order."""

    def __init__(self, loop: EngineLoop, requests: list[Request], arrival: float):
        self.loop, self.requests, self.arrival = loop, requests, arrival
        self.choice = {r.id: i for i, r in enumerate(requests)}
        self.open = set(self.choice)
        self.queue: asyncio.Queue | None = None

    def start(self) -> None:
        """Queue the requests in the engine (QueueFullError when it has no room for them all)."""
        self.queue = self.loop.submit(self.requests, self.arrival)

    async def deltas(self) -> AsyncIterator[tuple[int, Delta]]:
        """(choice index, Delta) until every choice has finished."""
        while self.open:
            item = await self.queue.get()
            if isinstance(item, EngineFailure):
                self.open.clear()
                raise EngineFailed(item.message)
            if item.finish_reason == "error":  # this request's step failed: a 500 for it (close aborts the rest)
                self.open.discard(item.index)
                raise EngineFailed(f"the engine failed while generating ({item.error})")
            if item.finish_reason is not None:
                self.open.discard(item.index)
            yield self.choice[item.index], item

    def close(self) -> None:
        """Abort whatever has not finished (client gone, error, shutdown); safe to call twice."""
        if self.open:
            self.loop.abort(list(self.open))
            self.open.clear()

    async def run(self, receive: Receive, on_delta: Callable[[int, Delta], None]) -> None:
        """Consume every Delta (non-streaming answers), aborting if the client disconnects first."""
        async def consume():
            async for i, d in self.deltas():
                on_delta(i, d)

        work = asyncio.ensure_future(consume())
        gone = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                work.result()  # raises EngineFailed
            else:
                raise ClientGone()
        finally:
            gone.cancel()
            work.cancel()
            self.close()


class SSEResponse(StreamingResponse):
    """A text/event-stream response that stops (and runs `on_close`) as soon as the client disconnects, also
    while no chunk is being produced, on every ASGI server version."""

    media_type = "text/event-stream"

    def __init__(self, content, on_close: Callable[[], None]):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away while we wrote
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            self.on_close()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


async def respond(loop: EngineLoop, requests: list[Request], arrival: float, request, out, body: Callable[[], dict],
                 stream: bool) -> Response:
    """Run one HTTP request's generation and answer it, as both generation endpoints do: a Server-Sent
    Events stream of `out.stream(gen)`, or once done the JSON `body()` (what `out.add` collected from each
    Delta); 499 when the client left first, 500 when the engine failed."""
    gen = Generation(loop, requests, arrival)
    gen.start()
    if stream:
        return SSEResponse(out.stream(gen), on_close=gen.close)
    try:
        await gen.run(request.receive, out.add)
    except ClientGone:
        return Response(status_code=499)
    except EngineFailed as e:
        return error_response(500, str(e), type="server_error")
    return JSONResponse(body())
