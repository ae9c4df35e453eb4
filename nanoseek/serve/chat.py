"""POST /v1/chat/completions: messages through the chat template, the answer split into reasoning and content.

Text between <think> and </think> goes to `reasoning_content` and the rest to `content`, in the message and
in each stream delta, as DeepSeek's API does. The tags are special tokens, so the engine is asked to keep
special tokens in the text and the split happens on whole tags; the other chat markers are dropped. Earlier
answers' `reasoning_content` is accepted and not fed back (DeepSeek-R1 drops earlier chains of thought).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from fastapi.responses import Response

from nanoseek.engine.reasoning import ReasoningSplitter
from nanoseek.serve.fields import finish, sampling_params, usage
from nanoseek.serve.schemas import ChatCompletionRequest
from nanoseek.serve.streaming import SSE_DONE, EngineFailed, Generation, new_id, respond, sse


async def create(state, body: ChatCompletionRequest, request: Request) -> Response:
    arrival = time.perf_counter()
    field = body.max_tokens_field
    request.state.param_names = {"max_new_tokens": field, "prompt": "messages", "logprobs": "top_logprobs"}
    body.check()
    state.check_model(body.model)
    state.check_choices(1, body.n)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    rid = new_id("chatcmpl")

    def prepare():
        ids = state.engine.encode_chat(messages)
        n_new = state.max_new_tokens(len(ids), body.requested_max_tokens, field)
        params = sampling_params(body, n_new, logprobs=(body.top_logprobs or 0) if body.logprobs else None,
                                 skip_special_tokens=False)
        return ids, state.make_requests(rid, ids, params, body.n)

    ids, reqs = await asyncio.to_thread(prepare)
    answer = Answer(state, body, rid, ids, reqs)
    return await respond(state.loop, reqs, arrival, request, answer, answer.message, body.stream)


class Answer:
    """The choices of one chat completion as they arrive: text split into reasoning and content."""

    def __init__(self, state, body: ChatCompletionRequest, rid: str, prompt_ids: list[int], requests: list):
        self.state, self.body, self.rid, self.prompt_ids, self.requests = state, body, rid, prompt_ids, requests
        self.created, self.model = int(time.time()), state.config.model_name
        n = body.n
        thinking = state.tokens.starts_thinking(prompt_ids)
        self.split = [ReasoningSplitter(thinking) for _ in range(n)]
        self.content = [[] for _ in range(n)]
        self.reasoning = [[] for _ in range(n)]
        self.logprobs = [[] for _ in range(n)]
        self.finish = [None] * n
        self.tokens = [0] * n

    def _feed(self, i: int, d) -> dict:
        """Route one Delta's text; returns the stream delta ({} when there is nothing to show)."""
        self.tokens[i] += len(d.token_ids)
        out = {}
        for kind, text in self.split[i].feed(self.state.tokens.strip_markers(d.text)):
            key = "reasoning_content" if kind == "reasoning" else "content"
            if text:
                out[key] = out.get(key, "") + text
        if "reasoning_content" in out:
            self.reasoning[i].append(out["reasoning_content"])
        if "content" in out:
            self.content[i].append(out["content"])
        if d.finish_reason is not None:
            self.finish[i] = finish(d.finish_reason)
        return out

    def add(self, i: int, d) -> None:
        self._feed(i, d)
        if d.logprobs:
            self.logprobs[i].extend(self.state.tokens.chat_logprobs(d.logprobs))

    def _usage(self) -> dict:
        # the prompt counts once however many choices share it (OpenAI's usage); the first choice's request
        # says how much of it came from the prefix cache
        return usage(len(self.prompt_ids), sum(self.tokens), self.requests[0].out.cached_tokens)

    def message(self) -> dict:
        choices = []
        for i in range(self.body.n):
            msg = {"role": "assistant", "content": "".join(self.content[i])}
            msg["reasoning_content"] = "".join(self.reasoning[i]) if self.reasoning[i] else None
            choices.append({"index": i, "message": msg,
                            "logprobs": {"content": self.logprobs[i]} if self.body.logprobs else None,
                            "finish_reason": self.finish[i]})
        return {"id": self.rid, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self._usage()}

    def _chunk(self, choices: list, usage_: dict | None = None) -> str:
        obj = {"id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": choices}
        if usage_ is not None:
            obj["usage"] = usage_
        return sse(obj)

    async def stream(self, gen: Generation):
        try:
            for i in range(self.body.n):
                yield self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None}])
            async for i, d in gen.deltas():
                delta = self._feed(i, d)
                lps = self.state.tokens.chat_logprobs(d.logprobs) if d.logprobs else None
                if delta or lps:
                    yield self._chunk([{"index": i, "delta": delta,
                                        "logprobs": {"content": lps} if lps else None, "finish_reason": None}])
                if d.finish_reason is not None:
                    yield self._chunk([{"index": i, "delta": {}, "logprobs": None,
                                        "finish_reason": self.finish[i]}])
            opts = self.body.stream_options
            if opts is not None and opts.include_usage:
                yield self._chunk([], self._usage())
        except EngineFailed as e:
            yield sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        finally:
            gen.close()
        yield SSE_DONE
