"""Running the app with uvicorn: in the foreground (`nanoseek serve`) or in a background thread (tests,
notebooks, benchmarks), on a socket bound before the thread starts so a port of 0 picks a free one without
a race."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time

import uvicorn

from nanoseek.errors import UserError


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach host (serving elsewhere without an API key deserves a warning)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int) -> None:
    """Bind host:port once and let it go, before the model loads (which can take minutes): a port in use or an
    address that is not this machine's is said at once, not after the load."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"{host} is not an address of this machine ({e}); use 127.0.0.1 or 0.0.0.0",
                        param="host") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"{host} is not an address of this machine ({e.strerror}); use 127.0.0.1, "
                                "0.0.0.0 or one of its own addresses", param="host") from None
            fix = ("choose another port, or stop what is using it" if e.errno == errno.EADDRINUSE else
                   "ports below 1024 need privileges: choose a higher port" if e.errno == errno.EACCES else
                   "check the host and port")
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): {fix}", param="port") from None


def _config(app, log_level: str) -> uvicorn.Config:
    # graceful shutdown waits this long for open streams; access logs stay off (the metrics count requests)
    return uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                          lifespan="on")


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM), shut down gracefully, then raise KeyboardInterrupt so that the
    command exits as an interrupted one does (130)."""
    cfg = _config(app, log_level)
    cfg.host, cfg.port = host, port
    server = uvicorn.Server(cfg)
    server.run()
    # uvicorn re-raises the signal it caught once it has shut down, but inside asyncio's runner that signal
    # only cancels the serving task, which may finish first: the process then exited 0 now and then.
    if server.should_exit:
        raise KeyboardInterrupt


class ServerThread:
    """uvicorn in a daemon thread: `with ServerThread(app) as s: requests.get(s.url + "/health")`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(_config(app, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="nanoseek-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the HTTP server failed to start (see the log above)")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the HTTP server did not start within {timeout:.0f} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
