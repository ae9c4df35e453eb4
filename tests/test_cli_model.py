"""The `nanoseek` command's model subcommands, driven as a user would."""

import json
import subprocess
import sys

import torch

import nanoseek
from nanoseek.cli import main
from nanoseek.config import preset


def run(*args):
    return subprocess.run([sys.executable, "-m", "nanoseek.cli", *args], capture_output=True, text=True, timeout=300)


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and nanoseek.__version__ in r.stdout
    r = run("--help")
    assert r.returncode == 0 and "demo" in r.stdout


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


def test_bad_input_exits_2_with_a_message(tmp_path):
    r = run("demo", "--checkpoint", str(tmp_path / "missing"))
    assert r.returncode == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr
    r = run("demo", "--preset", "nope")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run("demo", "--new-tokens", "-3")
    assert r.returncode == 2 and "must be an integer >= 0" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run("convert", str(tmp_path / "empty"), str(tmp_path / "out"))
    assert r.returncode == 2 and "config.json" in r.stderr
    assert not (tmp_path / "out").exists()
