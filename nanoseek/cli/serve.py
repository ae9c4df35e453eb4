"""`nanoseek serve`: the OpenAI-compatible HTTP server and the web chat page for one checkpoint."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from nanoseek.cli.common import (SPECULATIVE_HELP, add_compile_args, add_device_args, for_flag, positive_int,
                                 resolve_device, resolve_dtype, speculative_arg)
from nanoseek.config import ModelConfig
from nanoseek.engine import Engine, resolve_checkpoint


def port_number(s: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {s!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {s}")
    return v


def cmd_serve(args) -> None:
    """Serve a checkpoint over HTTP: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics
    and the chat page at /."""
    # fastapi, uvicorn: ~0.3 s, for serve only
    from nanoseek.serve import ServerConfig, check_address, create_app, is_loopback, serve

    if args.threads:
        torch.set_num_threads(args.threads)
    with for_flag({"host": "--host", "port": "--port"}):
        check_address(args.host, args.port)
    api_key = args.api_key or os.environ.get("NANOSEEK_API_KEY") or None
    if not is_loopback(args.host) and not api_key:
        print(f"nanoseek serve: warning: listening on {args.host} without an API key: anyone who can reach this "
              "port can use the model (set --api-key or NANOSEEK_API_KEY)", file=sys.stderr)
    dtype, device = resolve_dtype(args.dtype), resolve_device(args.device)
    with for_flag("--checkpoint"):
        ckpt = resolve_checkpoint(args.checkpoint)
        if args.compile:
            warm = Engine.compile_is_warm(ModelConfig.load(ckpt), dtype, device, speculative=args.speculative,
                                          max_batch=args.max_batch)
            note = "from the compile cache" if warm else "(a first start: a minute or two, kept on disk)"
            print(f"nanoseek serve: compiling the decode steps {note}; --eager skips it", file=sys.stderr)
        engine = Engine.load(ckpt, dtype=dtype, device=device, compile=args.compile, speculative=args.speculative,
                             max_batch=args.max_batch,
                             max_len=args.max_len, cache_memory=args.cache_memory * 2**20 if args.cache_memory else None,
                             max_waiting=args.max_waiting, step_tokens=args.step_tokens,
                             prefix_caching=not args.no_prefix_caching)
    name = args.model_name or ckpt.resolve().name
    config = ServerConfig(model_name=name, api_key=api_key, cors_origins=tuple(args.cors_origin or ()),
                          max_body_bytes=args.max_body_bytes, max_tokens_limit=args.max_tokens_limit)
    app = create_app(engine, config)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"nanoseek serve: model {name!r} from {ckpt} ({engine.device}, {str(engine.dtype).removeprefix('torch.')}, "
          f"context {engine.max_len}, " + (f"compiled in {engine.startup_seconds:.0f}s" if engine.compiled else "eager")
          + f"); chat page and API at http://{host}:{args.port}/ (API under /v1)",
          file=sys.stderr)
    serve(app, host=args.host, port=args.port, log_level=args.log_level)


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API and web chat for a checkpoint",
                       description=cmd_serve.__doc__)
    p.add_argument("--checkpoint", required=True,
                   help="model directory (nanoseek or Hugging Face) with tokenizer.json, or a training run directory")
    net = p.add_argument_group("network and limits")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 exposes it to the "
                          "network: set an API key then)")
    net.add_argument("--port", type=port_number, default=8000, help="default 8000")
    net.add_argument("--api-key", default=None,
                     help="require 'Authorization: Bearer KEY' on /v1 and /metrics (or set NANOSEEK_API_KEY)")
    net.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                     help="let pages from ORIGIN (e.g. http://localhost:3000) call the API; repeatable; '*' for any")
    net.add_argument("--model-name", help="the model id clients name (default: the checkpoint directory's name)")
    net.add_argument("--max-body-bytes", type=positive_int, default=2 * 2**20, help="larger request bodies get 413 (default 2 MiB)")
    net.add_argument("--max-tokens-limit", type=positive_int, default=4096,
                     help="new tokens a request may ask for per choice, the default when it asks none (default 4096)")
    net.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                     help="uvicorn's log level (default info)")
    eng = p.add_argument_group("engine")
    eng.add_argument("--max-batch", type=positive_int, default=32, help="requests decoded together (default 32)")
    eng.add_argument("--max-len", type=positive_int, default=None,
                     help="longest prompt + answer (default: the model's context, at most 8192)")
    eng.add_argument("--cache-memory", type=positive_int, default=None, metavar="MIB",
                     help="latent cache allocated at start, in MiB (default 256)")
    eng.add_argument("--max-waiting", type=positive_int, default=1024, help="waiting queue bound; past it requests get 503 (default 1024)")
    eng.add_argument("--step-tokens", type=positive_int, default=512,
                     help="tokens a step may spend while others decode; longer prompts prefill in chunks (default 512)")
    eng.add_argument("--no-prefix-caching", action="store_true", help="do not reuse cached prompt prefixes")
    eng.add_argument("--speculative", type=speculative_arg, default="auto", metavar="K", help=SPECULATIVE_HELP)
    add_compile_args(eng, default=True)
    eng.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    add_device_args(p)
    p.set_defaults(func=cmd_serve)
