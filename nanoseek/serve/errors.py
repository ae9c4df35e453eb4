"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status its SDKs expect.

nanoseek.errors says what went wrong and which input; here that becomes an HTTP response. `param` is
translated back to the field the client sent (the engine says `max_new_tokens`, the client wrote
`max_tokens` or `max_completion_tokens`). Invalid bodies are 400, not FastAPI's 422 with `{"detail": ...}`:
OpenAI clients read the `error` object and raise their BadRequestError for a 400.
"""

from __future__ import annotations

import json
import re

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from nanoseek.errors import SamplingError, UserError

# SamplingParams / engine names -> the OpenAI request field (a handler may override per endpoint)
PARAM_NAMES = {"max_new_tokens": "max_tokens", "prompt_logprobs": "logprobs"}
_SAMPLING_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "presence_penalty",
                    "frequency_penalty", "repetition_penalty", "seed", "stop_token_ids", "stop", "logprobs",
                    "prompt_logprobs")
STATUS_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                415: "invalid_request_error", 503: "server_error"}


def error_response(status: int, message: str, *, type: str | None = None, param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type or STATUS_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_bytes(status: int, message: str, *, code: str | None = None) -> bytes:
    """The same body, for the raw ASGI middleware (which answers before any route runs)."""
    body = {"error": {"message": message, "type": STATUS_TYPES.get(status, "server_error"), "param": None,
                      "code": code}}
    return json.dumps(body).encode()


def from_user_error(e: UserError, names: dict | None = None) -> JSONResponse:
    param = e.param
    if param is None and isinstance(e, SamplingError):  # the message starts with the field it is about
        first = e.message.split(" ", 1)[0]
        param = first if first in _SAMPLING_FIELDS else None
    if param is not None:
        param = (names or {}).get(param, PARAM_NAMES.get(param, param))
    return error_response(e.http_status, e.message, type=e.type, param=param, code=e.code)


def _is_union_tag(part) -> bool:
    """pydantic puts the union member it tried into `loc` ("str", "list[int]", "TextPart"); fields are
    lower-case identifiers."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool") or part[:1].isupper())


def param_path(loc) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if _is_union_tag(part):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def from_validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if not errors:
        return error_response(400, "the request body is not valid")
    # of a union's failures the deepest says most ("content[0].text: Field required", not "content: not a
    # string"); ties keep pydantic's order
    e = max(errors, key=lambda err: len(err.get("loc", ())))
    kind, loc = e.get("type", ""), tuple(e.get("loc", ()))
    if kind == "json_invalid":
        detail = (e.get("ctx") or {}).get("error", "")
        return error_response(400, f"the request body is not valid JSON ({detail}); send a JSON object"
                              if detail else "the request body is not valid JSON; send a JSON object")
    param = param_path(loc)
    if param is None:
        if kind == "missing":
            return error_response(400, "the request has no body; send a JSON object with the request's fields")
        return error_response(400, "the request body must be a JSON object with the request's fields "
                              "(Content-Type: application/json)")
    msg = e.get("msg", "invalid value")
    if kind == "too_short":
        return error_response(400, f"{param} must not be empty", param=param, code="too_short")
    if kind != "missing" and "input" in e:
        got = e["input"]
        shown = json.dumps(got) if isinstance(got, (int, float, str, bool, type(None))) else type(got).__name__
        msg += f", got {shown[:80]}"
    more = f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} in the body)" if len(errors) > 1 else ""
    return error_response(400, f"{param}: {msg}{more}", param=param, code=_code(kind))


def _code(kind: str) -> str | None:
    return re.sub(r"[^a-z_]", "", kind) or None
