"""The DeepSeek-V3 model: one definition for training, generation and export."""

from nanoseek.model.params import ParamCounts, count_params
from nanoseek.model.loss import IGNORE_INDEX
from nanoseek.model.transformer import DeepSeekV3, ModelOutput

__all__ = ["DeepSeekV3", "ModelOutput", "IGNORE_INDEX", "ParamCounts", "count_params"]
