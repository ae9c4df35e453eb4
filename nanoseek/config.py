"""ModelConfig: the DeepSeek-V3 architecture in Hugging Face `DeepseekV3Config` field names, and presets.

`config.json` round-trips with transformers: we read both the v4 (`rope_theta` + `rope_scaling`) and the
v5 (`rope_parameters`) spellings and write the v4 one, which both accept (docs/architecture.md §1.2). Hub-only
fields that HF stores but does not read (`num_nextn_predict_layers`, `scoring_func`, `topk_method`, ...) are
kept too, so a DeepSeek checkpoint's config survives a load/save cycle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoseek import schema
from nanoseek.errors import ConfigError
from nanoseek.io import atomic_write_text


@dataclass
class ModelConfig:
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense SwiGLU width (first_k_dense_replace layers)
    moe_intermediate_size: int = 2048  # one routed expert's SwiGLU width
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int | None = None  # MLA has no GQA: must equal num_attention_heads
    n_shared_experts: int = 1
    n_routed_experts: int = 256
    routed_scaling_factor: float = 2.5
    kv_lora_rank: int = 512
    q_lora_rank: int | None = 1536  # None: no query compression (single q_proj)
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    qk_nope_head_dim: int = 128
    n_group: int = 8
    topk_group: int = 4
    num_experts_per_tok: int = 8
    first_k_dense_replace: int = 3
    norm_topk_prob: bool = True
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # YaRN block, HF v4 spelling
    rope_interleave: bool = True
    attention_bias: bool = False
    attention_dropout: float = 0.0
    # Hub-only fields (DeepSeek's config.json): HF stores but never reads them.
    num_nextn_predict_layers: int = 0  # MTP depth D
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    aux_loss_alpha: float = 0.0  # sequence-wise balance loss coefficient (docs/architecture.md §4.6); 0 disables
    seq_aux: bool = True
    # Unknown keys from a config.json (e.g. quantization_config), written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads

    # ---- derived shapes -------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def num_moe_layers(self) -> int:
        return max(self.num_hidden_layers - self.first_k_dense_replace, 0)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Main layers from first_k_dense_replace on are MoE; MTP layers (idx >= L) always are."""
        return self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    # ---- validation -----------------------------------------------------------------------------
    def validate(self, where: str = "config") -> "ModelConfig":
        """Check every field's type and range (nanoseek.schema.CONFIG_FIELDS), then the rules between fields.
        Raises ConfigError naming the field; where: how the message names the source (a config.json path)."""
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{where}: field '{name}': {msg}", param=name)

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        schema.check(values, schema.CONFIG_FIELDS, ConfigError, where)
        for name in ("bos_token_id", "pad_token_id"):
            tid = getattr(self, name)
            need(tid is None or tid < self.vocab_size, name, f"({tid}) must be below vocab_size ({self.vocab_size})")
        need(all(t < self.vocab_size for t in self.eos_token_ids), "eos_token_id",
             f"({self.eos_token_id}) must be below vocab_size ({self.vocab_size})")
        need(self.num_key_value_heads == self.num_attention_heads, "num_key_value_heads",
             f"MLA has no grouped KV heads: must equal num_attention_heads ({self.num_attention_heads}), "
             f"got {self.num_key_value_heads}")
        need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", f"must be even, got {self.qk_rope_head_dim}")
        need(self.hidden_act == "silu", "hidden_act", f"only 'silu' (SwiGLU) is supported, got {self.hidden_act!r}")
        need(self.scoring_func == "sigmoid", "scoring_func",
             f"DeepSeek-V3 routing is sigmoid-scored; got {self.scoring_func!r} (DeepSeek-V2 softmax-gated "
             "checkpoints need the V2 architecture)")
        if self.first_k_dense_replace > 0:
            need(self.intermediate_size > 0, "intermediate_size", "must be positive when dense layers exist")
        if self.n_routed_experts > 0:
            E = self.n_routed_experts
            need(self.moe_intermediate_size > 0, "moe_intermediate_size", "must be positive")
            need(self.n_group >= 1 and E % self.n_group == 0, "n_group",
                 f"n_routed_experts ({E}) must be divisible by n_group ({self.n_group})")
            need(1 <= self.topk_group <= self.n_group, "topk_group",
                 f"must be between 1 and n_group ({self.n_group}), got {self.topk_group}")
            need(1 <= self.num_experts_per_tok <= self.topk_group * (E // self.n_group), "num_experts_per_tok",
                 f"must be between 1 and the experts in the kept groups "
                 f"({self.topk_group} x {E // self.n_group}), got {self.num_experts_per_tok}")
            if self.n_group > 1:
                need(E // self.n_group >= 2, "n_group", "group scores sum the top-2 experts: need >= 2 experts per group")
        else:
            need(self.first_k_dense_replace >= self.num_hidden_layers, "n_routed_experts",
                 "is 0 (no MoE) so first_k_dense_replace must be >= num_hidden_layers")
            need(self.num_nextn_predict_layers == 0, "num_nextn_predict_layers",
                 "MTP modules are MoE layers: need n_routed_experts > 0")
        if self.rope_scaling:
            rt = self.rope_type
            need(rt in ("yarn", "default"), "rope_scaling",
                 f"rope type {rt!r} is not supported (only 'yarn', as DeepSeek uses)")
            if rt == "yarn":
                need(float(self.rope_scaling.get("factor", 0)) >= 1.0, "rope_scaling.factor", "must be >= 1")
                need("original_max_position_embeddings" in self.rope_scaling,
                     "rope_scaling.original_max_position_embeddings", "is required for YaRN")
        return self

    # ---- HF config.json -------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], where: str = "config") -> "ModelConfig":
        schema.check(d, schema.CONFIG_ALIAS_FIELDS, ConfigError, where)  # the spellings folded in below
        d = dict(d)
        # HF v5 spelling: rope_theta and the YaRN block live in rope_parameters.
        rp = d.pop("rope_parameters", None)
        if rp:
            rp = dict(rp)
            if "rope_theta" in rp:
                d.setdefault("rope_theta", rp.pop("rope_theta"))
            if rp.get("rope_type", rp.get("type", "default")) != "default":
                d.setdefault("rope_scaling", rp)
        rs = d.get("rope_scaling")
        if rs:
            rs = dict(rs)
            if "type" in rs and "rope_type" not in rs:
                rs["rope_type"] = rs.pop("type")
            if rs.get("rope_type", "default") == "default":
                rs = None
            d["rope_scaling"] = rs
        if "num_mtp_layers" in d:  # HF v5 attribute_map alias
            d.setdefault("num_nextn_predict_layers", d.pop("num_mtp_layers"))
        if "num_local_experts" in d:
            d.setdefault("n_routed_experts", d.pop("num_local_experts"))
        for k in ("n_group", "topk_group"):
            if d.get(k) is None:
                d[k] = 1
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known and k not in _DERIVED_HF_KEYS}
        return cls(**kwargs, extra=extra).validate(where)

    def to_hf_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        d.update(
            architectures=["DeepseekV3ForCausalLM"],
            model_type="deepseek_v3",
            qk_head_dim=self.qk_head_dim,
            # HF's convention: head_dim sizes the rotary inv_freq; it is not the head size (docs/architecture.md §1.1)
            head_dim=self.qk_rope_head_dim,
            num_mtp_layers=self.num_nextn_predict_layers,
        )
        d.setdefault("torch_dtype", "float32")
        return d

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.exists():
            raise FileNotFoundError(f"no config.json at {p}: point to a nanoseek or Hugging Face model directory")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p} is not valid JSON ({e}); re-export the checkpoint") from e
        schema.check(d, schema.CONFIG_ALIAS_FIELDS, ConfigError, str(p))
        mt = d.get("model_type")
        if mt not in (None, "deepseek_v3", "kimi_k2"):
            raise ConfigError(f"{p}: model_type {mt!r} is not the DeepSeek-V3 architecture "
                              "(expected 'deepseek_v3'; DeepSeek-V2 checkpoints are softmax-gated and differ)")
        return cls.from_hf_dict(d, where=str(p))

    def save(self, path: str | os.PathLike) -> None:
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        atomic_write_text(p, json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes).validate()


# HF writes these derived or framework-level keys; we recompute what we need and drop the rest on read.
_DERIVED_HF_KEYS = {
    "architectures", "model_type", "qk_head_dim", "head_dim", "transformers_version", "use_cache",
    "output_router_logits", "pretraining_tp", "dtype", "torch_dtype", "_name_or_path", "auto_map",
    "num_mtp_layers", "return_dict", "output_hidden_states", "output_attentions", "ep_size", "moe_layer_freq",
    "tie_word_embeddings_", "id2label", "label2id", "problem_type", "chunk_size_feed_forward",
}


def yarn(factor: float, original_max_position_embeddings: int, beta_fast: float = 32.0, beta_slow: float = 1.0,
         mscale: float = 1.0, mscale_all_dim: float = 1.0) -> dict[str, Any]:
    return dict(rope_type="yarn", factor=float(factor), original_max_position_embeddings=original_max_position_embeddings,
                beta_fast=float(beta_fast), beta_slow=float(beta_slow), mscale=mscale, mscale_all_dim=mscale_all_dim)


# Named presets. `tiny` fits a unit test; `cpu-small` trains usefully on 2 CPU cores in minutes (it is the
# benchmarks' config, docs/performance.md §2.1, plus one MTP module);
# `cpu-small-dense` has the same active parameters with dense FFNs (the MoE-vs-dense comparison);
# `gpu-0.5b` (one GPU) and `gpu-3b` (8 GPUs) are fine-grained MoEs with DeepSeek-V3's own latent and head
# shapes (kv_lora_rank 512, qk_rope_head_dim 64, nope 128, v 128), the shape vLLM's MLA kernels serve (below),
# first layer dense, one MTP module; their vocab_size is a placeholder: pretraining takes the tokenizer's;
# the real shapes are for counting and cost on the meta device.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, n_shared_experts=1, n_routed_experts=8, routed_scaling_factor=2.5, kv_lora_rank=16,
        q_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=16, n_group=2, topk_group=1,
        num_experts_per_tok=2, first_k_dense_replace=1, max_position_embeddings=512, num_nextn_predict_layers=1,
    ),
    "cpu-small": dict(
        vocab_size=8192, hidden_size=256, intermediate_size=768, moe_intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=8, n_shared_experts=1, n_routed_experts=16, routed_scaling_factor=2.5, kv_lora_rank=64,
        q_lora_rank=None, qk_rope_head_dim=16, v_head_dim=32, qk_nope_head_dim=32, n_group=1, topk_group=1,
        num_experts_per_tok=2, first_k_dense_replace=1, max_position_embeddings=2048, num_nextn_predict_layers=1,
    ),
    "cpu-small-dense": dict(
        vocab_size=8192, hidden_size=256, intermediate_size=768, moe_intermediate_size=0, num_hidden_layers=4,
        num_attention_heads=8, n_shared_experts=0, n_routed_experts=0, kv_lora_rank=64, q_lora_rank=None,
        qk_rope_head_dim=16, v_head_dim=32, qk_nope_head_dim=32, n_group=1, topk_group=1, num_experts_per_tok=0,
        first_k_dense_replace=4, max_position_embeddings=2048, num_nextn_predict_layers=0,
    ),
    "gpu-0.5b": dict(  # 0.51B total, 0.13B active per token (32K vocab)
        vocab_size=32768, hidden_size=768, intermediate_size=2048, moe_intermediate_size=256, num_hidden_layers=12,
        num_attention_heads=6, n_shared_experts=1, n_routed_experts=64, routed_scaling_factor=2.5, kv_lora_rank=512,
        q_lora_rank=None, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=1, topk_group=1,
        num_experts_per_tok=6, first_k_dense_replace=1, max_position_embeddings=4096, num_nextn_predict_layers=1,
    ),
    "gpu-3b": dict(  # 2.99B total, 0.63B active per token (32K vocab)
        vocab_size=32768, hidden_size=1536, intermediate_size=4096, moe_intermediate_size=384, num_hidden_layers=24,
        num_attention_heads=12, n_shared_experts=2, n_routed_experts=64, routed_scaling_factor=2.5, kv_lora_rank=512,
        q_lora_rank=768, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=1, topk_group=1,
        num_experts_per_tok=6, first_k_dense_replace=1, max_position_embeddings=4096, num_nextn_predict_layers=1,
    ),
    "deepseek-v3": dict(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, n_shared_experts=1, n_routed_experts=256,
        routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
        qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3,
        max_position_embeddings=163840, rope_theta=10000.0,
        rope_scaling=yarn(40, 4096, 32, 1, 1.0, 1.0), num_nextn_predict_layers=1,
    ),
    "moonlight-16b-a3b": dict(
        vocab_size=163840, hidden_size=2048, intermediate_size=11264, moe_intermediate_size=1408,
        num_hidden_layers=27, num_attention_heads=16, n_shared_experts=2, n_routed_experts=64,
        routed_scaling_factor=2.446, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, v_head_dim=128,
        qk_nope_head_dim=128, n_group=1, topk_group=1, num_experts_per_tok=6, first_k_dense_replace=1,
        max_position_embeddings=8192, rope_theta=50000.0, rms_norm_eps=1e-5, aux_loss_alpha=0.001,
        num_nextn_predict_layers=0,
    ),
}


# The MLA kernels of external servers fix the latent width each cached token holds (kv_lora_rank +
# qk_rope_head_dim). What is known, from vLLM 0.32: its CPU backend accepts only 576 (DeepSeek's 512 + 64;
# cpu-small's 64 + 16 fails with "Head dimension 80 is not supported by MLA"), its GPU backends 320, 512 or
# 576. With MLA disabled vLLM loads other shapes but its output drifts from Hugging Face's. SGLang: not tested.
VLLM_MLA_WIDTHS = {"cpu": (576,), "gpu": (320, 512, 576)}


def mla_serving(cfg: ModelConfig) -> str:
    """One line: whether vLLM's MLA kernels (as tested, vLLM 0.32) serve this config's latent shape."""
    width = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    shape = f"{cfg.kv_lora_rank} + {cfg.qk_rope_head_dim} = {width}"
    cpu, gpu = width in VLLM_MLA_WIDTHS["cpu"], width in VLLM_MLA_WIDTHS["gpu"]
    known = "vLLM 0.32 accepts 576 on CPU and 320, 512 or 576 on its GPU backends; SGLang is untested"
    if cpu and gpu:
        return f"yes: latent {shape} (DeepSeek's shape; {known})"
    if gpu:
        return f"GPU backends only: latent {shape} ({known})"
    return (f"no: latent {shape}; {known}. The gpu-* presets use DeepSeek's 512 + 64 = 576")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings -> ModelConfig field overrides; values are JSON (numbers, null, true) or plain strings.
    vocab_size is not among them: it always comes from the tokenizer."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"extra", "vocab_size"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"{item!r}: expected KEY=VALUE with KEY a ModelConfig field (e.g. "
                              "num_nextn_predict_layers=0); vocab_size always comes from the tokenizer")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides}).validate()


def yarn_mscale(scale: float, mscale: float) -> float:
    """YaRN's logit sharpening m(s, mu) = 0.1 mu ln s + 1 for s > 1, else 1 (docs/architecture.md §2.4)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
