"""POST /v1/completions: raw prompts (a string, a list of them, token ids, or lists of ids), `echo`, and
logprobs of the prompt's tokens when echoed, which is how evaluation harnesses score a continuation
(lm-evaluation-harness's `local-completions` sends the context + continuation with echo and max_tokens 1).

`max_tokens: 0` with echo scores the prompt only: the engine needs at least one new token, so it runs with
one and the answer drops it (its text, its logprob, its count in usage).
Choice k of prompt p has index p * n + k, as OpenAI numbers them.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from fastapi.responses import Response

from nanoseek.errors import EngineError
from nanoseek.serve.fields import finish, sampling_params, usage
from nanoseek.serve.schemas import CompletionRequest
from nanoseek.serve.streaming import SSE_DONE, EngineFailed, Generation, new_id, respond, sse


async def create(state, body: CompletionRequest, request: Request) -> Response:
    arrival = time.perf_counter()
    request.state.param_names = {"max_new_tokens": "max_tokens", "prompt_logprobs": "logprobs"}
    body.check()
    state.check_model(body.model)
    prompts = body.prompts()
    if len(prompts) * body.n > state.config.max_choices:
        raise EngineError(f"{len(prompts)} prompts x n={body.n} is more than this server's limit of "
                          f"{state.config.max_choices} choices per request; split the request", param="prompt")
    state.check_choices(len(prompts), body.n)
    rid = new_id("cmpl")
    score_only = body.max_tokens == 0

    def prepare():
        tok = state.engine.tokenizer
        ids_list, reqs = [], []
        for p_i, p in enumerate(prompts):
            if isinstance(p, str):
                if tok is None:
                    raise EngineError("text prompts need the checkpoint's tokenizer.json; send token ids",
                                      param="prompt")
                state.engine.check_prompt_chars(len(p), param="prompt")
                ids = tok.encode(p)
            else:
                ids = list(p)
            if not ids:
                raise EngineError(f"prompt {p_i} is empty: give at least one token", param="prompt")
            n_new = 1 if score_only else state.max_new_tokens(len(ids), body.max_tokens, "max_tokens")
            if score_only and len(ids) + 1 > state.engine.max_len:
                state.max_new_tokens(len(ids), 0, "max_tokens")  # raises the context-length error
            params = sampling_params(
                body, n_new, logprobs=body.logprobs,
                prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None)
            ids_list.append(ids)
            reqs += state.make_requests(rid, ids, params, body.n, start=p_i * body.n)
        return ids_list, reqs

    ids_list, reqs = await asyncio.to_thread(prepare)
    out = Choices(state, body, rid, prompts, ids_list, reqs)
    return await respond(state.loop, reqs, arrival, request, out, out.response, body.stream)


class Choices:
    def __init__(self, state, body: CompletionRequest, rid: str, prompts, ids_list, requests):
        self.state, self.body, self.rid, self.requests = state, body, rid, requests
        self.prompts, self.ids_list = prompts, ids_list
        self.created, self.model = int(time.time()), state.config.model_name
        self.score_only = body.max_tokens == 0
        k = len(requests)
        self.text = [[] for _ in range(k)]
        self.ids = [[] for _ in range(k)]
        self.lps = [[] for _ in range(k)]
        self.finish = [None] * k
        self.echoed = [False] * k
        self.echo_lp: dict = {}  # choice -> (the echoed prompt's logprobs, its length in characters)

    def _prompt(self, i: int):
        return self.prompts[i // self.body.n], self.ids_list[i // self.body.n]

    def _echo(self, i: int, d) -> tuple[str, dict | None]:
        """The prompt part of choice i (echo): its text and, when logprobs are asked, its tokens' logprobs."""
        self.echoed[i] = True
        prompt, ids = self._prompt(i)
        text = prompt if isinstance(prompt, str) else self.state.tokens.tokenizer.decode(ids) \
            if self.state.tokens.tokenizer is not None else ""
        lp = None
        if self.body.logprobs is not None:
            lp = self.state.tokens.completion_logprobs(d.prompt_logprobs or [None] * len(ids), ids)
        return text, lp

    def _generated(self, i: int, d) -> tuple[str, list[int], list]:
        if self.score_only:
            return "", [], []
        return d.text, d.token_ids, d.logprobs or []

    def add(self, i: int, d) -> None:
        if self.body.echo and not self.echoed[i]:
            text, lp = self._echo(i, d)
            self.text[i].append(text)
            self.echo_lp[i] = (lp, len(text))
        text, ids, lps = self._generated(i, d)
        self.text[i].append(text)
        self.ids[i] += ids
        self.lps[i] += lps
        if d.finish_reason is not None:
            self.finish[i] = "length" if self.score_only else finish(d.finish_reason)

    def _logprobs(self, i: int) -> dict | None:
        if self.body.logprobs is None:
            return None
        echo_lp, offset = self.echo_lp.get(i, (None, 0))
        gen = self.state.tokens.completion_logprobs(self.lps[i], self.ids[i], offset)
        if echo_lp is None:
            return gen
        return {k: echo_lp[k] + gen[k] for k in gen}

    def _usage(self) -> dict:
        n = self.body.n
        prompt = sum(len(ids) for ids in self.ids_list)
        cached = sum(self.requests[p * n].out.cached_tokens for p in range(len(self.ids_list)))
        return usage(prompt, sum(len(x) for x in self.ids), cached)

    def response(self) -> dict:
        choices = [{"index": i, "text": "".join(self.text[i]), "logprobs": self._logprobs(i),
                    "finish_reason": self.finish[i]} for i in range(len(self.requests))]
        return {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self._usage()}

    def _chunk(self, choices: list, usage_: dict | None = None) -> str:
        obj = {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.model,
               "choices": choices}
        if usage_ is not None:
            obj["usage"] = usage_
        return sse(obj)

    async def stream(self, gen: Generation):
        try:
            async for i, d in gen.deltas():
                if self.body.echo and not self.echoed[i]:
                    text, lp = self._echo(i, d)
                    yield self._chunk([{"index": i, "text": text, "logprobs": lp, "finish_reason": None}])
                text, ids, lps = self._generated(i, d)
                self.ids[i] += ids
                if text or ids:
                    lp = (self.state.tokens.completion_logprobs(lps, ids) if self.body.logprobs is not None
                          else None)
                    yield self._chunk([{"index": i, "text": text, "logprobs": lp, "finish_reason": None}])
                if d.finish_reason is not None:
                    reason = "length" if self.score_only else finish(d.finish_reason)
                    yield self._chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": reason}])
            opts = self.body.stream_options
            if opts is not None and opts.include_usage:
                yield self._chunk([], self._usage())
        except EngineFailed as e:
            yield sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        finally:
            gen.close()
        yield SSE_DONE
