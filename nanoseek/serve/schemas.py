"""Request and response bodies of the OpenAI API, as pydantic models (the fields nanoseek serves).

Ranges follow OpenAI's where it states them (temperature 0..2, penalties -2..2, top_logprobs 0..20) and the
engine's elsewhere; a value outside them is a 400 naming the field. Unknown fields are ignored (clients send
many, e.g. `user`, `store`, `metadata`), but fields whose meaning nanoseek cannot honour (tools, a JSON
response format, a completion suffix, logit_bias) are refused rather than silently dropped.
`top_k`, `min_p`, `repetition_penalty` and `ignore_eos` are the usual extensions (vLLM, SGLang,
llama.cpp accept them too; the openai client sends them through `extra_body`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nanoseek.errors import EngineError

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
MAX_N = 16  # choices per request
MAX_STOP = 16  # stop strings per request


def _refuse(param: str, message: str) -> EngineError:
    return EngineError(message, param=param)


def _check_unicode(text: str, param: str) -> None:
    """JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer (nor UTF-8) can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(param, f"{param} is not valid Unicode text (it holds a lone surrogate escape such as "
                             "\\ud800)") from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)  # no "3" for 3, no true for 1


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    # developer is OpenAI's newer name for system
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    # the reasoning of an earlier answer: accepted and dropped (DeepSeek's API does not feed it back either)
    reasoning_content: str | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class _Sampling(_Body):
    """Fields chat and completions share."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # 0 or -1: off
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = Field(None, max_length=64)
    ignore_eos: bool = False
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None

    def check(self) -> None:
        """The checks that span fields (pydantic checked each one); raises EngineError naming the field."""
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > MAX_STOP:
            raise _refuse("stop", f"at most {MAX_STOP} stop strings are allowed, got {len(stops)}")
        if self.stream_options is not None and not self.stream:
            raise _refuse("stream_options", "stream_options is only allowed when stream is true")
        if self.logit_bias:
            raise _refuse("logit_bias", "logit_bias is not supported by this server")

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return [s for s in stops if s]  # an empty stop string would stop nothing: drop it


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check(self) -> None:
        super().check()
        if self.tools or self.functions:
            raise _refuse("tools", "tools and function calling are not supported by this server")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise _refuse("response_format", "only response_format {\"type\": \"text\"} is supported")
        if self.top_logprobs and not self.logprobs:
            raise _refuse("top_logprobs", "top_logprobs needs logprobs set to true")
        for i, m in enumerate(self.messages):
            if m.content is None and m.role != "assistant":  # OpenAI requires it; only an assistant turn may omit it
                raise _refuse(f"messages[{i}].content", f"messages[{i}] ({m.role}) has no content: give its text")
            _check_unicode(m.text(), f"messages[{i}].content")

    @property
    def max_tokens_field(self) -> str:
        """The field the client used for the answer's length (the newer name wins when both are given)."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default; 0 with echo scores the prompt only
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)

    def check(self) -> None:
        super().check()
        if self.suffix:
            raise _refuse("suffix", "suffix (insertion) is not supported by this server")
        if self.best_of is not None and self.best_of != self.n:
            raise _refuse("best_of", "best_of other than n is not supported by this server")
        if isinstance(self.prompt, list) and (not self.prompt or any(isinstance(p, list) and not p for p in self.prompt)):
            raise _refuse("prompt", "the prompt is empty: give a string, token ids, or a list of them")
        for p in self.prompts():
            if isinstance(p, str):
                _check_unicode(p, "prompt")

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


# ---- responses ----------------------------------------------------------------------------------------------
class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nanoseek"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
