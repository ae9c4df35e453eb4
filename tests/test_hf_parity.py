"""Logit parity with transformers' DeepseekV3ForCausalLM (fp32, max |diff| <= 1e-4), both directions."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

import nanoseek
from nanoseek.config import preset, yarn
from nanoseek.hf import CheckpointError, load_model, save_model

from conftest import randomize_

TOL = 1e-4

# Each variant flips several features against the tiny base (docs/architecture.md §10).
VARIANTS = {
    "qlora-groups-normtopk": dict(),  # q_lora 32, n_group 2 / topk_group 1, norm_topk_prob, first_k_dense 1
    "no-qlora-yarn-bias-alldense0": dict(q_lora_rank=None, first_k_dense_replace=0, attention_bias=True,
                                         rope_scaling=yarn(4.0, 32, 32, 1, 1.0, 1.0), max_position_embeddings=128),
    "no-normtopk-tied-4groups": dict(norm_topk_prob=False, tie_word_embeddings=True, n_group=4, topk_group=2,
                                     first_k_dense_replace=2, num_hidden_layers=3),
    "yarn-mscale-differs-2dense": dict(rope_scaling=yarn(8.0, 64, 16, 2, 0.707, 1.0), max_position_embeddings=512,
                                       first_k_dense_replace=2, routed_scaling_factor=1.7),
}


def _ours(name):
    cfg = preset("tiny", **VARIANTS[name])
    model = nanoseek.DeepSeekV3(cfg).eval()
    randomize_(model)
    return model


def _ids(cfg, B=2, T=24):
    return torch.randint(0, cfg.vocab_size, (B, T))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_export_loads_in_transformers_with_same_logits(name, tmp_path):
    model = _ours(name)
    save_model(model, tmp_path / "ckpt")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    assert type(hf).__name__ == "DeepseekV3ForCausalLM"
    ids = _ids(model.config)
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() <= TOL
    # sanity: the comparison is not vacuous (a different input changes the logits)
    assert (ours - model(_ids(model.config))).abs().max().item() > 1e-2


def _hf_random(cfg_dict):
    hf_cfg = DeepseekV3Config(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "model_type")})
    hf = DeepseekV3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.normal_(0, 0.05)
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.5)
    return hf


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_transformers_save_pretrained_imports_with_same_logits(name, tmp_path):
    cfg = preset("tiny", **VARIANTS[name], num_nextn_predict_layers=0)
    hf = _hf_random(cfg.to_hf_dict())
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    ids = _ids(cfg)
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= TOL


def test_hf_checkpoint_without_mtp_layers_loads_main_model_with_warning(tmp_path):
    cfg = preset("tiny")  # declares one MTP module
    hf = _hf_random(cfg.to_hf_dict())  # transformers has no MTP: save_pretrained drops it
    hf.save_pretrained(tmp_path / "hf")
    with pytest.warns(UserWarning, match="MTP"):
        ours = load_model(tmp_path / "hf")
    assert len(ours.mtp) == 0
    ids = _ids(cfg)
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= TOL


def test_rope_interleave_false_checkpoint_is_permuted_on_load(tmp_path):
    """A 'rotated weights' checkpoint (half-split rope rows, rope_interleave=false) gives the same logits."""
    cfg = preset("tiny", num_nextn_predict_layers=0, rope_scaling=yarn(4.0, 32), max_position_embeddings=128)
    hf = _hf_random(cfg.to_hf_dict())
    ids = _ids(cfg)
    with torch.no_grad():
        ref = hf(ids).logits
        # permute rope rows interleaved -> half-split, as a converter producing rotated weights would
        dr, H, dqk = cfg.qk_rope_head_dim, cfg.num_attention_heads, cfg.qk_head_dim
        perm = torch.cat((torch.arange(0, dr, 2), torch.arange(1, dr, 2)))
        for layer in hf.model.layers:
            w = layer.self_attn.q_b_proj.weight.view(H, dqk, -1)
            w[:, cfg.qk_nope_head_dim:] = w[:, cfg.qk_nope_head_dim:][:, perm].clone()
            w = layer.self_attn.kv_a_proj_with_mqa.weight
            w[cfg.kv_lora_rank:] = w[cfg.kv_lora_rank:][perm].clone()
    hf.config.rope_interleave = False
    with torch.no_grad():
        assert (hf(ids).logits - ref).abs().max().item() <= TOL  # HF agrees the two layouts are equivalent
    hf.save_pretrained(tmp_path / "rot")
    assert json.loads((tmp_path / "rot" / "config.json").read_text())["rope_interleave"] is False
    ours = load_model(tmp_path / "rot")
    with torch.no_grad():
        assert (ours(ids) - ref).abs().max().item() <= TOL


def test_sharded_export_with_index_round_trips_and_loads_in_transformers(tmp_path):
    model = _ours("qlora-groups-normtopk")
    save_model(model, tmp_path / "sharded", max_shard_bytes=64 * 1024)
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert "model.safetensors.index.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 2
    ids = _ids(model.config)
    back = load_model(tmp_path / "sharded")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(ids)
        assert torch.equal(back(ids), ref)
        assert (hf(ids).logits - ref).abs().max().item() <= TOL
    # MTP weights survive (transformers would drop them): same MTP loss after the round trip
    tgt = torch.roll(ids, -1, 1)
    with torch.no_grad():
        assert torch.equal(back(ids, targets=tgt).mtp_losses[0], model(ids, targets=tgt).mtp_losses[0])


def test_generation_config_is_written_for_transformers_and_a_hub_one_is_kept(tmp_path):
    from transformers import GenerationConfig

    model = _ours("qlora-groups-normtopk")
    model.config.eos_token_id, model.config.pad_token_id = [1, 6], 2
    save_model(model, tmp_path / "m")
    gen = GenerationConfig.from_pretrained(tmp_path / "m")
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (0, [1, 6], 2)
    # a hub checkpoint's own generation_config.json (sampling defaults) survives a re-save
    hub = {"bos_token_id": 0, "eos_token_id": 1, "do_sample": True, "temperature": 0.6, "top_p": 0.95}
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps(hub))
    save_model(load_model(tmp_path / "m"), tmp_path / "m")
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text()) == hub


def test_bad_checkpoints_get_precise_errors(tmp_path):
    model = _ours("qlora-groups-normtopk")
    save_model(model, tmp_path / "ok")
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())

    # config says more experts than the weights hold -> the missing per-expert names are listed
    bad = tmp_path / "bad_experts"
    save_model(model, bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "n_routed_experts": 16}))
    with pytest.raises(CheckpointError, match=r"missing.*experts\.8\.gate_proj"):
        load_model(bad)

    # wrong width -> 'wrong shape' with both shapes named
    bad = tmp_path / "bad_shape"
    save_model(model, bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "kv_lora_rank": 24}))
    with pytest.raises(CheckpointError, match=r"wrong shape.*kv_a_proj_with_mqa"):
        load_model(bad)

    # truncated weights file
    bad = tmp_path / "truncated"
    save_model(model, bad)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(bad)

    # pickle only: refused, never unpickled
    bad = tmp_path / "pickle"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(cfg))
    torch.save({"x": torch.zeros(1)}, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_model(bad)

    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(tmp_path / "nope")
