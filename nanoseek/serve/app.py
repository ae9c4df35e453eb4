"""The FastAPI application: routes, limits, authentication, CORS, and errors in OpenAI's shape.

    app = create_app(engine, ServerConfig(api_key="sk-local"))   # then: uvicorn.run(app, host="127.0.0.1")

The app owns an EngineLoop (the engine thread), started and stopped with the app's lifespan. Defaults are
the safe ones: no CORS headers unless origins are given (browsers then keep other sites from reading the
API), POST bodies must be JSON (so another site cannot fire a "simple" cross-origin request at a local
server) and at most `max_body_bytes` (413 otherwise), and one request may ask for at most
`max_tokens_limit` new tokens per choice.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from nanoseek.engine.sampling import SamplingParams
from nanoseek.errors import ContextLengthError, EngineError, UserError
from nanoseek.serve.chat import create as create_chat
from nanoseek.serve.completions import create as create_completion
from nanoseek.serve.errors import error_bytes, error_response, from_user_error, from_validation_error
from nanoseek.serve.loop import EngineLoop, check_not_stepped
from nanoseek.serve.metrics import Metrics
from nanoseek.serve.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from nanoseek.serve.tokens import TokenTexts

STATIC = Path(__file__).parent / "static"
# the page loads nothing from elsewhere; a Content-Security-Policy makes that a rule, so even a rendering bug
# cannot run injected script or send the conversation to another host
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PUBLIC_PATHS = ("/", "/health", "/favicon.ico")  # no API key needed (the page asks for one itself)
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/")


@dataclass
class ServerConfig:
    model_name: str = "nanoseek"  # the id /v1/models lists and requests must name (or leave out)
    api_key: str | None = None  # when set, /v1/* and /metrics need "Authorization: Bearer <key>"
    cors_origins: tuple[str, ...] = ()  # origins allowed to call the API from a browser; () = none
    max_body_bytes: int = 2 * 2**20
    max_tokens_limit: int = 4096  # new tokens one choice may ask for (and the default when it asks for none)
    max_choices: int = 64  # prompts x n in one request


class ServerState:
    """What the handlers share: the engine, its thread, the metrics and the limits."""

    def __init__(self, engine, config: ServerConfig, loop: EngineLoop):
        self.engine, self.config, self.loop, self.metrics = engine, config, loop, loop.metrics
        self.created = int(time.time())
        self.tokens = TokenTexts(engine.tokenizer)

    def check_model(self, name: str | None) -> None:
        if name and name != self.config.model_name:
            raise ModelNotFound(name, self.config.model_name)

    def max_new_tokens(self, n_prompt: int, requested: int | None, field: str) -> int:
        """The answer length to run: what the client asked for (checked against the limit and the context),
        or, when it asked for none, whatever fits in both."""
        limit, max_len = self.config.max_tokens_limit, self.engine.max_len
        room = max_len - n_prompt
        if requested is None:
            if room < 1:
                raise ContextLengthError(
                    f"this model's maximum context length is {max_len} tokens and the prompt has {n_prompt}: no "
                    "room is left for an answer; shorten the prompt", param=field)
            return min(limit, room)
        if requested > limit:
            raise EngineError(f"{field} is {requested}, above this server's limit of {limit} new tokens per "
                              f"request; ask for at most {limit}", param=field)
        if n_prompt + requested > max_len:
            raise ContextLengthError(
                f"this model's maximum context length is {max_len} tokens, but {n_prompt + requested} were "
                f"asked for ({n_prompt} in the prompt, {requested} for the answer); shorten the prompt or ask "
                f"for at most {max(room, 0)} new tokens in {field}", param=field)
        return requested

    def check_choices(self, prompts: int, n: int) -> None:
        """A request of `prompts` x n choices must fit the engine's waiting queue, or it could never be queued (a
        503 says "retry later", which would never succeed): a 400 naming the limit."""
        limit = self.engine.scheduler.max_waiting
        if prompts * n > limit:
            what = f"n={n}" if prompts == 1 else f"{prompts} prompts x n={n}"
            raise EngineError(f"{what} asks for {prompts * n} answers at once, more than this server's waiting queue "
                              f"holds ({limit}, nanoseek serve --max-waiting): it could never be queued; ask for at "
                              f"most {limit}", param="n" if n > limit or prompts == 1 else "prompt")

    def make_requests(self, rid: str, prompt_ids: list[int], params: SamplingParams, n: int, start: int = 0):
        """n engine requests for one prompt; choice j of a seeded request uses seed + j, so choices differ and
        the whole answer reproduces."""
        out = []
        for j in range(n):
            p = params
            if params.seed is not None:
                p = dataclasses.replace(params, seed=(params.seed + j) % 2**64)
            out.append(self.engine.make_request(prompt_ids, p, request_id=f"{rid}-{start + j}"))
        return out


class ModelNotFound(Exception):
    def __init__(self, name: str, served: str):
        self.name, self.served = name, served


def create_app(engine, config: ServerConfig | None = None, loop: EngineLoop | None = None) -> FastAPI:
    """The server for one engine. `loop`: an EngineLoop over it (default: a new one, started and stopped with
    the app)."""
    config = config or ServerConfig()
    check_not_stepped(engine, loop)  # before any server starts: two engine threads would race
    loop = loop or EngineLoop(engine, Metrics())
    state = ServerState(engine, config, loop)

    @asynccontextmanager
    async def lifespan(app):
        loop.start()
        try:
            yield
        finally:
            loop.stop()

    app = FastAPI(title="nanoseek", summary="OpenAI-compatible API for a nanoseek model", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.nanoseek = state

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return from_validation_error(exc)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return from_user_error(exc, getattr(request.state, "param_names", None))

    @app.exception_handler(ModelNotFound)
    async def _no_model(request: Request, exc: ModelNotFound):
        return error_response(404, f"the model {exc.name!r} does not exist; this server serves {exc.served!r} "
                              "(GET /v1/models lists it)", param="model", code="model_not_found")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code in (404, 405):
            msg = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 400:  # FastAPI could not read the body (not UTF-8, nested too deep, ...)
            msg = f"the request body could not be read as JSON ({exc.detail}); send a UTF-8 JSON object"
        else:
            msg = str(exc.detail)
        return error_response(exc.status_code, msg, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        return error_response(500, f"internal server error ({type(exc).__name__}); see the server log",
                              type="server_error")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await create_chat(state, body, request)

    @app.post("/v1/completions")
    async def text_completions(body: CompletionRequest, request: Request):
        return await create_completion(state, body, request)

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[_card(state)])

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> ModelCard:
        state.check_model(name)
        return _card(state)

    @app.get("/health")
    async def health():
        if not loop.alive:
            return error_response(503, "the engine thread is not running", code="engine_down")
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(engine), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                            "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(Guard, config=config, metrics=state.metrics)
    if config.cors_origins:  # outermost: preflight requests carry no key and must get CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["Authorization", "Content-Type"])
    return app


def _card(state: ServerState) -> ModelCard:
    return ModelCard(id=state.config.model_name, created=state.created, max_model_len=state.engine.max_len)


class Guard:
    """Raw ASGI middleware in front of every route: API key, JSON content type and body size for POSTs,
    and the request counter by endpoint and status. It reads a POST body itself (refusing it past the
    limit, whether or not Content-Length announced it) and replays it to the app."""

    def __init__(self, app, config: ServerConfig, metrics: Metrics):
        self.app, self.config, self.metrics = app, config, metrics
        self.key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "/static" if path.startswith("/static/") else "other"
        status = {}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refused = self._refuse(scope)
            if refused is None and scope["method"] == "POST":
                body, refused = await self._read_body(receive)
                if refused is None:
                    receive = _replay(body, receive)
            if refused is not None:
                code, msg, err, headers = refused
                await _answer(counted_send, code, error_bytes(code, msg, code=err), headers)
                return
            await self.app(scope, receive, counted_send)
        finally:
            self.metrics.http_requests.inc(endpoint, str(status.get("code", 499)))

    def _refuse(self, scope):
        headers = dict(scope.get("headers") or [])
        path = scope["path"]
        if self.key is not None and path not in PUBLIC_PATHS and not path.startswith("/static/") \
                and scope["method"] != "OPTIONS":
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                msg = ("a valid API key is needed: send the header 'Authorization: Bearer <key>'" if not auth
                       else "the API key is not valid")
                return 401, msg, "invalid_api_key", [(b"www-authenticate", b"Bearer")]
        if scope["method"] == "POST":
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                return 415, "POST bodies must be JSON: send the header 'Content-Type: application/json'", \
                    "unsupported_media_type", []
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.config.max_body_bytes:
                return 413, self._too_big(), "request_too_large", []
        return None

    def _too_big(self) -> str:
        return (f"the request body is larger than this server's limit of {self.config.max_body_bytes:,} bytes "
                "(nanoseek serve --max-body-bytes)")

    async def _read_body(self, receive):
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", (499, "client disconnected", None, [])
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.config.max_body_bytes:
                return b"", (413, self._too_big(), "request_too_large", [])
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
