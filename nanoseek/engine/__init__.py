"""Generation: latent KV cache, sampling, batched and speculative decoding, streaming detokenization."""

from nanoseek.engine.cache import LatentCache
from nanoseek.engine.engine import Completion, Delta, Engine, RunStats, load_tokenizer
from nanoseek.engine.sampling import SamplingParams, TokenLogprob
from nanoseek.errors import ContextLengthError, EngineError, SamplingError

__all__ = ["Engine", "EngineError", "Completion", "Delta", "RunStats", "SamplingParams", "SamplingError",
           "TokenLogprob", "LatentCache", "ContextLengthError", "load_tokenizer"]
