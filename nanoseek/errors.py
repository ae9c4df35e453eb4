"""The errors a user can cause and fix: one hierarchy every layer raises and every front end maps.

The command line prints `str(error)` on one line and exits 2; the HTTP server answers with `http_status` and
OpenAI's error body `{"error": {"message", "type", "param", "code"}}`, filled from the same attributes. So an
error says *what* was wrong in its message, *which* input in `param` (a flag, a config field, a request
field; None when it is not one input), and its class says what kind of problem it is.

Nothing here imports the rest of nanoseek: every module may import it, and it imports nothing back.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad flag value, bad file, bad request field); never a bug of nanoseek.

    param: the input that was wrong, as the user spelled it (`--lr`, `rope_theta`, `max_tokens`), if one was.
    """

    http_status = 400
    type = "invalid_request_error"  # OpenAI's error "type"
    code: str | None = None  # OpenAI's machine-readable "code", where one applies

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class ConfigError(UserError, ValueError):
    """A model or training config value that cannot describe a valid run; param names the field."""


class CheckpointError(UserError, ValueError):
    """A model directory that cannot be read or written as asked (missing, corrupt, mismatched tensors)."""

    http_status = 500  # a server's own checkpoint is broken: not the client's fault
    type = "server_error"


class DataError(UserError, ValueError):
    """Bad or missing input data (corpus, token shards, manifest, chat or task files); names the file."""


class TokenizerError(DataError):
    """A tokenizer that cannot be trained, loaded or used as asked, or that does not match the data or model."""


class SamplingError(UserError, ValueError):
    """A sampling parameter out of range; the message names it and the accepted range."""


class EngineError(UserError, ValueError):
    """A request the engine cannot serve as asked (empty prompt, text without a tokenizer, ...)."""


class ContextLengthError(EngineError):
    """A request that does not fit the model's context (prompt + new tokens); the message gives the numbers."""

    code = "context_length_exceeded"


class RunInUseError(UserError):
    """A run folder that another nanoseek process is writing to (one writer per folder); names that process."""

    http_status = 409


class QueueFullError(EngineError):
    """The engine's waiting queue is full; the client should retry later."""

    http_status = 503
    type = "server_error"
    code = "queue_full"


__all__ = ["UserError", "ConfigError", "CheckpointError", "DataError", "TokenizerError", "SamplingError",
           "EngineError", "ContextLengthError", "QueueFullError", "RunInUseError"]
