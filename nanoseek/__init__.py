"""nanoseek: train, RL-tune and serve DeepSeek-V3-architecture language models on a budget."""

__version__ = "0.1.0"

from nanoseek.config import ModelConfig, preset  # noqa: E402
from nanoseek.hf import load_model, save_model  # noqa: E402
from nanoseek.model import DeepSeekV3, ModelOutput  # noqa: E402

__all__ = ["__version__", "ModelConfig", "preset", "DeepSeekV3", "ModelOutput", "load_model", "save_model"]
