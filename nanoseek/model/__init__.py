"""The DeepSeek-V3 model: one definition for training, generation and export.

transformer (the whole model and its losses), block (a decoder layer), mla (Multi-head Latent Attention),
attention (its kernels), moe (routing, balancing, the MoE layer), experts (the routed experts' kernels), mtp
(multi-token prediction), layers (RMSNorm, SwiGLU), rope (YaRN rotary embeddings), loss (the output head's
chunked losses), inference and packed (generation's latent cache, absorbed decode and packed weights),
params (parameter counts)."""

from nanoseek.model.params import ParamCounts, count_params
from nanoseek.model.loss import IGNORE_INDEX
from nanoseek.model.transformer import DeepSeekV3, ModelOutput

__all__ = ["DeepSeekV3", "ModelOutput", "IGNORE_INDEX", "ParamCounts", "count_params"]
