"""Generation: latent KV cache, sampling, batched and speculative decoding, streaming detokenization."""

from nanoseek.engine.cache import ContextLengthError, LatentCache
from nanoseek.engine.engine import Completion, Delta, Engine, EngineError, RunStats, load_tokenizer
from nanoseek.engine.sampling import SamplingError, SamplingParams, TokenLogprob

__all__ = ["Engine", "EngineError", "Completion", "Delta", "RunStats", "SamplingParams", "SamplingError",
           "TokenLogprob", "LatentCache", "ContextLengthError", "load_tokenizer"]
