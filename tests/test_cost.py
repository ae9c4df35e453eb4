"""`nanoseek.cost` and `nanoseek cost`: FLOP counts checked by hand, DeepSeek-V3's reported GPU-hours, the MFU
inversion, a run's log, and the errors a user can cause."""

from __future__ import annotations

import json
import re

import pytest

import nanoseek.cost as cost
from nanoseek.cli import main
from nanoseek.config import ModelConfig, preset
from nanoseek.train.log import read_log
from nanoseek.cost import (HARDWARE, flops_per_token, forward_flops, gpu_hours, implied_mfu, summarize_run)
from nanoseek.model import count_params

from train_helpers import build_data


@pytest.fixture(autouse=True)
def fixed_cpu_peak(monkeypatch):
    # The "cpu" row measures a matmul (0.5 s, noisy): a fixed figure keeps the tests fast and exact.
    monkeypatch.setattr(cost, "measure_matmul_peak", lambda *a, **k: 1e11)


# Two small configs whose FLOPs are worked out by hand below: d=16, H=2, d_nope=8, d_rope=4 (d_qk=12), d_v=6,
# r_kv=6, vocab 100, SwiGLU widths 40 (dense) and 8 (expert), T=10.
SMALL = dict(vocab_size=100, hidden_size=16, intermediate_size=40, moe_intermediate_size=8, num_attention_heads=2,
             kv_lora_rank=6, qk_rope_head_dim=4, v_head_dim=6, qk_nope_head_dim=8, n_group=1, topk_group=1)
T = 10


def moe_qlora_mtp() -> ModelConfig:
    """3 layers (1 dense, 2 MoE: 4 routed experts, top-2, 1 shared), query compression r_q=10, one MTP module."""
    return ModelConfig(**SMALL, num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=4,
                       num_experts_per_tok=2, n_shared_experts=1, q_lora_rank=10, num_nextn_predict_layers=1).validate()


def dense_no_qlora() -> ModelConfig:
    """2 dense layers, a single q_proj, no MTP."""
    return ModelConfig(**SMALL, num_hidden_layers=2, first_k_dense_replace=2, n_routed_experts=0,
                       num_experts_per_tok=0, n_shared_experts=0, q_lora_rank=None,
                       num_nextn_predict_layers=0).validate()


def test_flops_by_hand_moe_with_qlora_and_mtp():
    f = forward_flops(moe_qlora_mtp(), T)  # forward, per token, causal
    # per layer, 2 FLOPs per multiply-add:
    q = 2 * (16 * 10 + 10 * (2 * 12))  # q_a_proj [10, 16], q_b_proj [2*12, 10] = 800
    kv_a = 2 * 16 * (6 + 4)  # latent + rope key = 320
    kv_b = 2 * 6 * (2 * (8 + 6))  # per-head nope keys and values = 336
    o = 2 * (2 * 6) * 16  # 384
    attn = 2 * 2 * (12 + 6) * (1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10) / 10  # causal: token t sees t keys = 396
    norms = 2 * (16 + 16 + 10 + 6)  # input, post-attention, q_a and kv_a latent norms = 96
    dense = 2 * 3 * 16 * 40  # gate, up, down = 3840
    routed = 2 * (2 * 3 * 16 * 8)  # top-2 experts = 1536
    shared = 1 * 3 * 16 * 8 * 2  # 768
    router = 2 * 16 * 4  # 128
    head = 2 * 16 * 100  # 3200
    assert f["q_proj"] == 3 * q and f["kv_a_proj"] == 3 * kv_a and f["kv_b_proj"] == 3 * kv_b and f["o_proj"] == 3 * o
    assert f["attention"] == 3 * attn
    assert f["dense_ffn"] == 1 * dense
    assert f["routed_experts"] == 2 * routed and f["shared_experts"] == 2 * shared and f["router"] == 2 * router
    assert f["norms"] == 3 * norms + 2 * 16  # + the final norm
    assert f["head"] == head
    # MTP: eh_proj [16, 32], one MoE layer with its own attention, enorm/hnorm/shared_head.norm, the head again
    assert f["mtp.eh_proj"] == 2 * 32 * 16
    assert f["mtp.layer"] == q + kv_a + kv_b + o + routed + shared + router + norms + 2 * 3 * 16
    assert f["mtp.attention"] == attn and f["mtp.head"] == head
    main_fwd = 3 * (q + kv_a + kv_b + o + attn + norms) + dense + 2 * (routed + shared + router) + 2 * 16 + head
    mtp_fwd = 2 * 32 * 16 + q + kv_a + kv_b + o + attn + routed + shared + router + norms + 2 * 3 * 16 + head
    assert sum(f.values()) == main_fwd + mtp_fwd == 28_016
    tr = flops_per_token(moe_qlora_mtp(), T, causal=True)
    assert tr.total == 3 * 28_016  # training = forward + backward = 3 x forward
    assert tr.mtp == 3 * mtp_fwd and tr.head == 3 * head and tr.attention == 3 * 3 * attn
    # without MTP, and with attention over all T keys (older training logs' convention)
    assert flops_per_token(moe_qlora_mtp(), T, mtp=False).total == 3 * main_fwd
    full = flops_per_token(moe_qlora_mtp(), T, causal=False)
    assert full.attention == 3 * 3 * (2 * 2 * (12 + 6) * 10)
    # the weight matmuls agree with the parameter count taken from the module tree (6N)
    pc = count_params(moe_qlora_mtp())
    assert tr.weights == 6 * pc.active_non_embedding and tr.mtp - 3 * (attn + head) == 6 * pc.mtp_active


def test_flops_by_hand_dense_without_qlora():
    f = forward_flops(dense_no_qlora(), T)
    q = 2 * 16 * (2 * 12)  # one q_proj [2*12, 16] = 768
    per_layer = (q + 2 * 16 * (6 + 4) + 2 * 6 * (2 * (8 + 6)) + 2 * (2 * 6) * 16  # q, kv_a, kv_b, o
                 + 2 * 2 * (12 + 6) * 55 / 10  # causal attention
                 + 2 * (16 + 16 + 6)  # norms: no q_a latent norm without query compression
                 + 2 * 3 * 16 * 40)  # dense SwiGLU
    assert f["q_proj"] == 2 * q
    assert f["routed_experts"] == f["shared_experts"] == f["router"] == 0 and f["dense_ffn"] == 2 * 3840
    assert all(v == 0 for k, v in f.items() if k.startswith("mtp."))
    assert sum(f.values()) == 2 * per_layer + 2 * 16 + 2 * 16 * 100 == 15_472
    assert flops_per_token(dense_no_qlora(), T, causal=True).total == 3 * 15_472


def test_deepseek_v3_pretraining_gpu_hours_within_5_percent():
    """The V3 report (table 1): 2,664K H800 GPU-hours for 14.8T tokens at sequence length 4K."""
    fpt = flops_per_token(preset("deepseek-v3"), 4096, causal=True)
    assert 255e9 < fpt.total < 265e9  # ~6 x 37B active + causal attention + the MTP module
    flops = fpt.total * 14.8e12
    hours = gpu_hours(flops, 0.40, HARDWARE["h800"].bf16)
    assert hours == pytest.approx(2.664e6, rel=0.05)
    assert implied_mfu(flops, 2.664e6, HARDWARE["h800"].bf16) == pytest.approx(0.407, abs=0.001)
    assert implied_mfu(flops, 2.664e6, HARDWARE["h800"].fp8) == pytest.approx(0.203, abs=0.001)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["cost", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_reproduces_deepseek_v3(capsys):
    rc, out, _ = run_cli(capsys, "--preset", "deepseek-v3", "--tokens", "14.8T", "--gpu", "h800", "--mfu", "0.40",
                         "--gpus", "2048")
    assert rc == 0
    hours = int(re.search(r"GPU-hours: ([\d,]+)", out).group(1).replace(",", ""))
    assert abs(hours / 2.664e6 - 1) < 0.05
    assert "context 4,096" in out and "1 MTP module counted" in out and "3 x" in out
    assert "$5.42M" in out and "days on 2,048 GPUs" in out and "reported: 2,664,000" in out

    rc, out, _ = run_cli(capsys, "--preset", "deepseek-v3", "--tokens", "14.8T", "--gpu", "h800",
                         "--gpu-hours", "2.664M")
    assert rc == 0
    assert "implied MFU: 20.3% of the fp8 dense peak" in out and "implied MFU: 40.7% of the bf16 dense peak" in out
    assert "180K per trillion tokens" in out


@pytest.mark.parametrize("mfu", ["0.4", "27%", "0.9"])
def test_implied_mfu_round_trips(capsys, mfu):
    rc, out, _ = run_cli(capsys, "--preset", "moonlight-16b-a3b", "--tokens", "5.7T", "--gpu", "h100", "--mfu", mfu)
    assert rc == 0
    hours = re.search(r"GPU-hours: ([\d,]+)", out).group(1).replace(",", "")
    rc, out, _ = run_cli(capsys, "--preset", "moonlight-16b-a3b", "--tokens", "5.7T", "--gpu", "h100",
                         "--gpu-hours", hours)
    m = float(mfu.rstrip("%")) / (100 if mfu.endswith("%") else 1)
    assert f"implied MFU: {100 * m:.1f}% of the bf16 dense peak" in out
    assert f"implied MFU: {50 * m:.1f}% of the fp8 dense peak" in out
    F = 1.23e23
    assert implied_mfu(F, gpu_hours(F, m, 989e12), 989e12) == pytest.approx(m, rel=1e-12)


def test_token_counts_and_breakdown(capsys):
    from nanoseek.units import parse_count

    assert parse_count("14.8T", "--tokens") == 14_800_000_000_000
    assert parse_count("500B", "--tokens") == 500_000_000_000
    assert parse_count("2e12", "--tokens") == 2_000_000_000_000
    assert parse_count("1.5M", "--tokens") == 1_500_000
    assert parse_count("2,664K", "--gpu-hours") == 2_664_000
    rc, out, _ = run_cli(capsys, "--preset", "tiny", "--breakdown", "--seq-len", "32")
    assert rc == 0
    for label in ("MLA query projections (q_a + q_b)", "attention scores + values (causal, T=32)",
                  "MoE routed experts (top-2 of 8)", "MoE shared experts", "MoE router", "dense FFN layers (1 layer)",
                  "output head", "MTP eh_proj", "total (training: 3x)"):
        assert label in out
    rc, out, _ = run_cli(capsys, "--preset", "cpu-small", "--breakdown")
    assert "(q_proj, no q-lora)" in out
    # every hardware row when no --gpu is given, the measured CPU included
    rc, out, _ = run_cli(capsys, "--preset", "moonlight-16b-a3b", "--tokens", "5.7T", "--mfu", "40%")
    assert rc == 0 and all(re.search(rf"^  {k} ", out, re.M) for k in ("h800", "h100", "h200", "a100", "b200",
                                                                       "mi300x", "cpu"))


@pytest.mark.parametrize("args, param, words", [
    (["--gpu", "h900", "--mfu", "0.4"], "--gpu", "unknown hardware 'h900'"),
    (["--tokens=-5B", "--mfu", "0.4"], "--tokens", "must be positive"),
    (["--tokens", "-5", "--mfu", "0.4"], "--tokens", "must be positive"),
    (["--tokens", "0.1", "--mfu", "0.4"], "--tokens", "at least 1"),
    (["--tokens", "14.8Q", "--mfu", "0.4"], "--tokens", "cannot read '14.8Q'"),
    (["--tokens", "abc", "--mfu", "0.4"], "--tokens", "K, M, B or T suffix"),
    (["--mfu", "0.4", "--gpu-hours", "1M", "--gpu", "h800"], "--mfu", "exactly one of --mfu"),
    (["--gpu", "h800"], "--mfu", "exactly one of --mfu"),
    (["--mfu", "0"], "--mfu", "(0, 1]"),
    (["--mfu", "1.5"], "--mfu", "(0, 1]"),
    (["--mfu", "40"], "--mfu", "40%"),
    (["--gpu-hours", "2M"], "--gpu", "--gpu-hours needs --gpu"),
    (["--gpu", "a100", "--mfu", "0.3", "--precision", "fp8"], "--precision", "no fp8 peak"),
    (["--gpu", "h800", "--mfu", "0.3", "--price", "-1"], "--price", ">= 0"),
    (["--gpu", "h800", "--mfu", "0.3", "--gpus", "0"], "--gpus", "positive"),
    # past float range, or so large the FLOP counts overflow (issue 22.8)
    (["--tokens", "1e308", "--mfu", "0.4"], "--tokens", "too large: at most 1e30"),
    (["--tokens", "1e400", "--mfu", "0.4"], "--tokens", "too large"),
    (["--tokens", "2e18T", "--mfu", "0.4"], "--tokens", "too large"),
    (["--gpu", "h800", "--gpu-hours", "1e400"], "--gpu-hours", "too large"),
    (["--gpu", "h800", "--gpu-hours", "1e308"], "--gpu-hours", "too large"),
    (["--mfu", "0.4", "--seq-len", "10000000000000000000000000"], "--seq-len", "up to"),
])
def test_bad_inputs_exit_2_naming_the_flag(capsys, args, param, words):
    if not any(a.startswith("--tokens") for a in args):
        args = ["--tokens", "1T", *args]
    rc, _, err = run_cli(capsys, "--preset", "deepseek-v3", *args)
    assert rc == 2
    assert err.startswith("nanoseek cost: error: ") and param in err and words in err and len(err.splitlines()) == 1


def test_the_largest_counts_print_finite_figures_and_a_binary_hardware_file_is_refused(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "--preset", "deepseek-v3", "--tokens", "1e30", "--gpu", "h800", "--mfu", "0.4")
    assert rc == 0 and "inf" not in out and "nan" not in out, out + err
    hw = tmp_path / "hw.json"
    hw.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    rc, _, err = run_cli(capsys, "--preset", "tiny", "--tokens", "1B", "--mfu", "0.4", "--hardware-file", str(hw))
    assert rc == 2 and f"--hardware-file {hw} is not valid JSON" in err and len(err.splitlines()) == 1, err


def test_model_and_run_dir_errors(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "--tokens", "1T", "--mfu", "0.4")
    assert rc == 2 and "--preset NAME, --checkpoint DIR" in err
    rc, _, err = run_cli(capsys, str(tmp_path / "nowhere"))
    assert rc == 2 and "RUN_DIR" in err and "log.jsonl" in err
    rc, _, err = run_cli(capsys, "--checkpoint", str(tmp_path), "--tokens", "1T", "--mfu", "0.4")
    assert rc == 2 and "config.json" in err
    (tmp_path / "log.jsonl").write_text(json.dumps({"event": "train", "step": 1, "time": 0}) + "\n")
    rc, _, err = run_cli(capsys, str(tmp_path))
    assert rc == 2 and "no 'start' record" in err
    rc, _, err = run_cli(capsys, str(tmp_path), "--tokens", "1T")
    assert rc == 2 and "leave out --preset" in err


def test_hardware_file_overrides_and_adds(capsys, tmp_path):
    hw = tmp_path / "hw.json"
    hw.write_text(json.dumps({"h800": {"price": 1.0}, "my-gpu": {"name": "My GPU", "bf16": 5e14, "price": 3.0}}))
    rc, out, _ = run_cli(capsys, "--preset", "deepseek-v3", "--tokens", "14.8T", "--gpu", "h800", "--mfu", "0.4",
                         "--hardware-file", str(hw))
    assert rc == 0 and "$2.71M at $1 per GPU-hour" in out
    rc, out, _ = run_cli(capsys, "--preset", "deepseek-v3", "--tokens", "14.8T", "--gpu", "h800", "--mfu", "0.4",
                         "--price", "3")
    assert rc == 0 and "$3 per GPU-hour (--price)" in out and "cost: $8.13M at $3 per GPU-hour" in out
    rc, out, _ = run_cli(capsys, "--list-hardware", "--hardware-file", str(hw))
    assert rc == 0 and "My GPU" in out and "this CPU (measured bfloat16 matmul)" in out and "100 GFLOP" in out
    hw.write_text(json.dumps({"my-gpu": {"price": 3.0}}))
    rc, _, err = run_cli(capsys, "--list-hardware", "--hardware-file", str(hw))
    assert rc == 2 and "needs bf16" in err
    hw.write_text(json.dumps({"h800": {"bf16": -1}}))
    rc, _, err = run_cli(capsys, "--list-hardware", "--hardware-file", str(hw))
    assert rc == 2 and "h800.bf16 must be a positive number" in err


def _record(event, step, time, **kw):
    return json.dumps({"event": event, "step": step, "time": time, **kw}) + "\n"


def test_run_dir_report_from_a_written_log(capsys, tmp_path):
    # 4 steps of 128 tokens at 1 MFLOP/token on a 1 GFLOP/s device: 100 tokens/s = 10% MFU; 50 s of wall time
    log = _record("start", 0, 1000.0, config={"seq_len": 32, "dtype": "bfloat16"}, world_size=1,
                  tokens_per_step=128, flops_per_token=1e6, peak_flops=1e9, peak_source="measured bfloat16 matmul")
    for s in range(1, 5):
        log += _record("train", s, 1000.0 + 10 * s, tokens=128 * s, tokens_per_s=100.0, mfu=0.1, step_time=1.28)
    log += _record("end", 4, 1050.0)
    (tmp_path / "log.jsonl").write_text(log)
    rc, out, _ = run_cli(capsys, str(tmp_path))
    assert rc == 0
    assert "4 steps, finished" in out and "tokens trained: 512" in out and "5.12e8" in out
    assert "wall time: 50 s" in out and "100 tokens/s" in out
    assert "10.0% while stepping" in out and "1.0% over the wall time" in out
    # h800 at 10%: 5.12e8 / (0.1 x 989e12) s; at the typical 40%: a quarter of that
    assert "GPU-seconds" in out  # a run this small costs less than a GPU-hour anywhere
    row = re.search(r"^  h800 .*$", out, re.M).group(0).split()
    assert float(row[3]) == pytest.approx(5.12e8 / (0.1 * 989e12), rel=0.01)
    assert float(row[5]) == pytest.approx(5.12e8 / (0.4 * 989e12), rel=0.01)
    # the "cpu" row is the run's own device: at its MFU, the run's compute time (512 tokens at 100 tokens/s)
    row = re.search(r"^  cpu .*$", out, re.M).group(0).split()
    assert float(row[3]) == pytest.approx(5.12, rel=0.01)
    assert "does not carry over" in out

    # a resumed run: wall time sums the segments, not the gap between them
    recs = [json.loads(x) for x in log.splitlines()][:-1]
    recs += [dict(recs[0], event="resume", step=4, time=5000.0),
             {"event": "train", "step": 5, "time": 5010.0, "tokens": 640, "tokens_per_s": 100.0, "mfu": 0.1}]
    s = summarize_run(recs)
    assert s.wall_s == 40 + 10 and s.resumes == 1 and s.tokens == 640 and not s.finished


def test_run_dir_report_on_a_real_tiny_run(capsys, tmp_path):
    data = build_data(tmp_path)
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--preset", "tiny", "--seq-len", "32",
                 "--steps", "3", "--warmup-steps", "1", "--batch-size", "2", "--eval-every", "0", "--eval-batches", "1",
                 "--peak-flops", "1e10"]) == 0
    capsys.readouterr()
    rc, out, _ = run_cli(capsys, str(run), "--gpu", "h100")
    assert rc == 0
    assert "3 steps, finished" in out and "model: checkpoints/step_0000003" in out
    assert f"tokens trained: {3 * 2 * 32:,}" in out
    cfg = ModelConfig.load(run / "checkpoints" / "step_0000003")
    fpt = flops_per_token(cfg, 32).total
    assert f"192 tokens x {fpt / 1e6:.3g} MFLOP (causal attention)" in out
    # the log counts attention causal itself, so no reader converts it
    records = read_log(run)
    assert records[0]["flops_per_token"] == fpt and records[0]["attention_flops"] == "causal"
    assert summarize_run(records).flops_per_token == summarize_run(records, cfg).flops_per_token == fpt
    # a log written before it did (all T keys, no "attention_flops") is converted when the model is known
    old = [dict(r, flops_per_token=flops_per_token(cfg, 32, causal=False).total) if r["event"] == "start" else r
           for r in records]
    old[0].pop("attention_flops")
    full, converted = summarize_run(old), summarize_run(old, cfg)
    assert full.flops_per_token > fpt and "all T keys" in full.counted
    assert converted.flops_per_token == fpt and converted.step_mfu == pytest.approx(
        summarize_run(records).step_mfu * fpt / full.flops_per_token)
    assert re.search(r"^  h100 ", out, re.M) and not re.search(r"^  h800 ", out, re.M)
