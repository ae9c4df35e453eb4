"""What the two generation endpoints (chat and completions) share of the OpenAI protocol: the engine's sampling
parameters read from a request, and the `usage` and `finish_reason` fields of a response."""

from __future__ import annotations

from nanoseek.engine.sampling import SamplingParams


def sampling_params(body, max_new_tokens: int, **extra) -> SamplingParams:
    """The engine's parameters from the fields chat and completions share."""
    seed = None if body.seed is None else body.seed % 2**64
    return SamplingParams(
        max_new_tokens=max_new_tokens, temperature=body.temperature, top_k=max(body.top_k, 0), top_p=body.top_p,
        min_p=body.min_p, presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty, seed=seed, stop=body.stop_list(),
        stop_token_ids=list(body.stop_token_ids or []), ignore_eos=body.ignore_eos, **extra)


def usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}}


def finish(reason: str | None) -> str | None:
    return "stop" if reason == "abort" else reason  # an abort the client sees came from the server's side
