"""The OpenAI-compatible HTTP server and its web chat page.

    from nanoseek.engine import Engine
    from nanoseek.serve import ServerConfig, create_app
    app = create_app(Engine.load("ckpt"), ServerConfig(model_name="my-model"))   # any ASGI server runs it

`nanoseek serve --checkpoint DIR` does the same from the command line. Modules: app (routes, limits, auth,
CORS), chat and completions (the two generation endpoints), fields (what the two share: sampling parameters,
usage, finish_reason), schemas (request bodies), loop (the engine thread), streaming (one request's
generation, SSE, disconnects), errors (OpenAI's error shape), metrics (Prometheus text), tokens (logprob token
texts), server (uvicorn in a thread or in the foreground), static/ (the page).
"""

from nanoseek.serve.app import ServerConfig, create_app
from nanoseek.serve.loop import EngineLoop
from nanoseek.serve.server import ServerThread, check_address, is_loopback, serve

__all__ = ["ServerConfig", "create_app", "EngineLoop", "ServerThread", "check_address", "is_loopback",
           "serve"]
