"""The `nanoseek` command's model subcommands, driven as a user would: demo, info (with whether vLLM's MLA kernels
serve a shape), convert (never over its input)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nanoseek
from nanoseek.cli import main
from nanoseek.config import preset

from cli_helpers import cli_error, cli_run


def run(*args):
    return subprocess.run([sys.executable, "-m", "nanoseek.cli", *args], capture_output=True, text=True, timeout=300)


def test_version_and_help(capsys):
    r = run("--version")  # the command as a process
    assert r.returncode == 0 and nanoseek.__version__ in r.stdout
    rc, out, _ = cli_run(capsys, ["--help"])
    assert rc == 0 and "demo" in out


def test_demo_runs_and_saves_a_checkpoint_transformers_can_load(tmp_path, capsys):
    assert main(["demo", "--new-tokens", "4", "--save", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "greedy continuation" in out and "wrote Hugging Face checkpoint" in out
    model = nanoseek.load_model(tmp_path / "ck")
    assert model.config == preset("tiny")


def test_info_prints_counts(capsys):
    assert main(["info", "--preset", "deepseek-v3"]) == 0
    out = capsys.readouterr().out
    assert "671,026,404,352" in out and "35,136" in out


def test_convert_dequantizes_an_fp8_checkpoint(tmp_path):
    """Write a DeepSeek-style FP8 checkpoint (e4m3 weights + 128x128 weight_scale_inv), convert, compare."""
    from safetensors.torch import save_file

    from nanoseek.hf import to_hf_state_dict

    cfg = preset("tiny", hidden_size=160, intermediate_size=200)  # widths that leave ragged 128-blocks
    model = nanoseek.DeepSeekV3(cfg)
    src = tmp_path / "fp8"
    src.mkdir()
    tensors, expected = {}, {}
    for name, t in to_hf_state_dict(model):
        t = t.detach().contiguous()
        if t.dim() == 2 and "embed" not in name and "lm_head" not in name and "shared_head.head" not in name \
                and not name.endswith("mlp.gate.weight"):
            rows, cols = t.shape
            s = torch.rand((rows + 127) // 128, (cols + 127) // 128) * 1e-3 + 1e-4
            full = s.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
            q = (t / full).clamp(-448, 448).to(torch.float8_e4m3fn)
            tensors[name], tensors[name + "_scale_inv"] = q, s
            expected[name] = (q.float() * full).to(torch.bfloat16)
        else:
            tensors[name] = t.clone()
    save_file(tensors, str(src / "model.safetensors"))
    d = cfg.to_hf_dict()
    d["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                "weight_block_size": [128, 128]}
    (src / "config.json").write_text(json.dumps(d))
    assert main(["convert", str(src), str(tmp_path / "bf16")]) == 0
    d2 = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert "quantization_config" not in d2 and d2["torch_dtype"] == "bfloat16"
    back = dict(to_hf_state_dict(nanoseek.load_model(tmp_path / "bf16")))
    for name, want in expected.items():
        assert torch.equal(back[name], want), name


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    r = run("demo", "--checkpoint", str(tmp_path / "missing"))  # a process: its stderr holds the message alone
    assert r.returncode == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr
    cli_error(capsys, ["demo", "--preset", "nope"], "invalid choice")
    cli_error(capsys, ["demo", "--new-tokens", "-3"], "must be an integer >= 0")
    (tmp_path / "empty").mkdir()
    cli_error(capsys, ["convert", str(tmp_path / "empty"), str(tmp_path / "out")], "config.json")
    assert not (tmp_path / "out").exists()


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


# ---- convert never writes over its input (8.2) ----------------------------------------------------------------
def test_convert_refuses_any_destination_that_touches_the_source(tmp_path, capsys):
    src = tmp_path / "models" / "fp32"
    assert main(["demo", "--new-tokens", "0", "--save", str(src)]) == 0
    before = _digest(src)
    (tmp_path / "link").symlink_to(src)
    for dest, what in [(src, "is the source directory"), (tmp_path / "link", "is the source directory"),
                       (src / "bf16", "inside the source directory"), (src.parent, "holds the source directory"),
                       (tmp_path, "holds the source directory")]:
        rc, _, err = cli_run(capsys, ["convert", str(src), str(dest)])
        assert rc == 2 and what in err, (dest, err)
    assert _digest(src) == before and sorted(p.name for p in src.parent.iterdir()) == ["fp32"]
    rc, out, _ = cli_run(capsys, ["convert", str(src), str(tmp_path / "bf16")])
    assert rc == 0 and _digest(src) == before
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


# ---- info: vLLM's MLA kernels, the GPU presets (8.16) ---------------------------------------------------------
def test_info_says_whether_vllm_mla_kernels_serve_the_shape(tmp_path, capsys):
    rc, out, _ = cli_run(capsys, ["info", "--preset", "cpu-small"])
    assert rc == 0 and "served by vLLM's MLA kernels" in out and "no: latent 64 + 16 = 80" in out
    assert "576 on CPU and 320, 512 or 576 on its GPU backends" in out
    for name, total in [("gpu-0.5b", "509,780,736"), ("gpu-3b", "2,994,347,520")]:
        rc, out, _ = cli_run(capsys, ["info", "--preset", name])
        assert rc == 0 and "yes: latent 512 + 64 = 576" in out and total in out
        cfg = preset(name)  # fine-grained MoE, first layer dense, one MTP module, DeepSeek's head shapes
        assert (cfg.first_k_dense_replace, cfg.num_nextn_predict_layers, cfg.n_routed_experts) == (1, 1, 64)
        assert (cfg.qk_nope_head_dim, cfg.v_head_dim) == (128, 128)
    nanoseek.ModelConfig(**{**preset("tiny").__dict__, "kv_lora_rank": 256, "extra": {}}).validate().save(tmp_path)
    rc, out, _ = cli_run(capsys, ["info", "--checkpoint", str(tmp_path)])  # 256 + 8 = 264: no
    assert rc == 0 and "no: latent 256 + 8 = 264" in out


@pytest.mark.slow  # a process of its own: ~4 s, most of it importing torch
def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`nanoseek ... | head`: when the reader goes away the command stops without a traceback."""
    p = subprocess.Popen([sys.executable, "-m", "nanoseek.cli", "tasks", "show", "--task", "all", "--n", "200"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # ~180 KB, more than a pipe holds
    p.stdout.read(100)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err
