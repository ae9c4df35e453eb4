"""Generation: a scheduler over a persistent latent KV cache (continuous batching, chunked prefill, prefix
reuse), sampling, speculative decoding with the MTP module, streaming detokenization.

engine (the `Engine` API), scheduler (which requests run when), runner (the model's steps over the cache),
cache (the latent KV pool), request (one request's state), sampling, speculative, detokenize, reasoning
(<think> apart from the answer), conversation (a chat's turns over the engine), prompts (prompt files in,
completion records out), loading (a checkpoint's directory and tokenizer)."""

from nanoseek.engine.conversation import Conversation
from nanoseek.engine.engine import Engine, RunStats
from nanoseek.engine.loading import load_tokenizer, resolve_checkpoint
from nanoseek.engine.request import Completion, Delta
from nanoseek.engine.sampling import SamplingParams, TokenLogprob
from nanoseek.errors import ContextLengthError, EngineError, QueueFullError, SamplingError

__all__ = ["Conversation", "Engine", "EngineError", "Completion", "Delta", "RunStats", "SamplingParams",
           "SamplingError",
           "TokenLogprob", "ContextLengthError", "QueueFullError", "load_tokenizer", "resolve_checkpoint"]
