"""ModelConfig: HF field names, both rope spellings, validation naming the field."""

import json

import pytest
from transformers import DeepseekV3Config

from nanoseek.config import ConfigError, ModelConfig, PRESETS, preset, yarn


def test_round_trip_through_config_json_and_transformers(tmp_path):
    cfg = preset("tiny", rope_scaling=yarn(4.0, 32), max_position_embeddings=128, q_lora_rank=None)
    cfg.save(tmp_path)
    back = ModelConfig.load(tmp_path)
    assert back == cfg
    hf = DeepseekV3Config.from_pretrained(tmp_path)  # transformers reads what we wrote
    assert hf.kv_lora_rank == cfg.kv_lora_rank and hf.q_lora_rank is None
    assert hf.rope_parameters["rope_type"] == "yarn" and hf.rope_parameters["factor"] == 4.0
    hf.save_pretrained(tmp_path / "hf")  # ... and we read what transformers writes (rope_parameters spelling)
    d = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "rope_parameters" in d
    again = ModelConfig.load(tmp_path / "hf")
    assert again.rope_scaling["factor"] == 4.0 and again.rope_theta == cfg.rope_theta
    assert again.kv_lora_rank == cfg.kv_lora_rank and again.num_nextn_predict_layers == cfg.num_nextn_predict_layers


def test_hub_style_config_fields_are_read_and_kept():
    d = {**preset("deepseek-v3").to_hf_dict(), "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    d["rope_scaling"] = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                         "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    cfg = ModelConfig.from_hf_dict(d)
    assert cfg.rope_type == "yarn" and cfg.extra["quantization_config"]["quant_method"] == "fp8"
    assert cfg.to_hf_dict()["quantization_config"] == d["quantization_config"]


@pytest.mark.parametrize("field,value,match", [
    ("num_key_value_heads", 2, "num_key_value_heads"),
    ("n_group", 3, "n_group"),
    ("topk_group", 3, "topk_group"),
    ("num_experts_per_tok", 20, "num_experts_per_tok"),
    ("qk_rope_head_dim", 7, "qk_rope_head_dim"),
    ("scoring_func", "softmax", "scoring_func"),
    ("hidden_size", 0, "hidden_size"),
])
def test_validation_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        preset("tiny", **{field: value})


def test_load_rejects_other_architectures_and_bad_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("gpt-5")


def test_every_preset_is_valid():
    for name in PRESETS:
        preset(name)
