"""The training loop through `nanoseek pretrain` on real shards, plus its pure pieces (schedules, Muon, FLOPs)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import nanoseek
from nanoseek.cli import main as cli
from nanoseek.config import preset
from nanoseek.cost import attention_flops_per_token, flops_per_token, measure_matmul_peak, mfu, table_peak
from nanoseek.model import count_params
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.config import TrainConfig, merge_for_resume
from nanoseek.train.log import read_log
from nanoseek.train.optim import Muon, build_optimizers, orthogonalize
from nanoseek.train.schedule import lr_at

from train_helpers import build_data, train_records

SHORT = ["--preset", "tiny", "--seq-len", "32", "--eval-batches", "2", "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("train_data"))


# ---- end to end through the CLI -------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_pretrain_cli_loss_goes_down_and_writes_checkpoints(data, tmp_path, capsys, optimizer):
    run = tmp_path / "run"
    rc = cli(["pretrain", "--data", str(data), "--out", str(run), *SHORT, "--steps", "40", "--batch-size", "4",
              "--eval-every", "20", "--checkpoint-every", "10", "--keep-last", "2", "--optimizer", optimizer,
              "--bias-update-gamma", "0.01"])
    assert rc == 0
    out = capsys.readouterr().out
    assert str(run / "log.jsonl") in out and str(run / "checkpoints") in out  # says where outputs go

    recs = train_records(run)
    assert [r["step"] for r in recs] == list(range(1, 41))
    first, last = recs[0]["main_loss"], sum(r["main_loss"] for r in recs[-5:]) / 5
    assert first > math.log(512) - 0.5  # starts near uniform over the 512-token vocab
    assert last < first - 0.6, (first, last)
    evals = [r for r in read_log(run) if r["event"] == "eval"]
    assert [e["step"] for e in evals] == [20, 40]
    assert evals[-1]["val_loss"] < first - 0.6
    assert 0 < evals[-1]["val_bpb"] < evals[0]["val_bpb"]
    r = recs[-1]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mtp_losses", "balance_loss", "time"):
        assert key in r
    assert r["mfu"] > 0 and r["tokens_per_s"] > 0
    # loss = main + lambda/D * mtp + balance
    assert r["loss"] == pytest.approx(r["main_loss"] + 0.3 * r["mtp_losses"][0] + r["balance_loss"], rel=1e-5)
    model_cfg = preset("tiny")
    n_routers = model_cfg.num_hidden_layers - model_cfg.first_k_dense_replace + model_cfg.num_nextn_predict_layers
    assert len(r["expert_maxvio"]) == n_routers and all(x >= 0.0 for x in r["expert_maxvio"])
    # MaxVio and the starved share are the step's expert_load read two ways
    for load, mv, starved in zip(r["expert_load"], r["expert_maxvio"], r["experts_starved"]):
        fair = sum(load) / len(load)
        assert mv == pytest.approx(max(load) / fair - 1, abs=1e-3)
        # (the logged shares are rounded to 4 decimals: a load at exactly a quarter of the fair share may
        # read just under it)
        assert starved == pytest.approx(sum(x < 0.25 * fair - 5e-5 for x in load) / len(load))
    # lr schedule followed: warm-up, then the WSD decay ends at min_lr_ratio x lr
    assert recs[0]["lr"] == pytest.approx(3e-3 / 2) and recs[-1]["lr"] == pytest.approx(3e-4)

    # the bias moved by +-gamma every step: values are multiples of gamma, bounded by steps x gamma
    assert recs[0]["router_bias_max"] == pytest.approx(0.01) and recs[0]["router_bias_min"] == pytest.approx(-0.01)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_0000030", "step_0000040"]  # keep-last 2
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000040"
    final = run / "checkpoints" / "step_0000040"
    weights = load_file(str(final / "model.safetensors"))
    biases = [t for k, t in weights.items() if k.endswith("e_score_correction_bias")]
    assert len(biases) == n_routers
    for b in biases:
        assert b.dtype == torch.float32 and b.abs().max() <= 0.4 + 1e-6 and b.abs().max() > 0
        assert torch.allclose(b / 0.01, (b / 0.01).round(), atol=1e-3)

    # every checkpoint is a Hugging Face model directory with the tokenizer
    model = nanoseek.load_model(final)
    assert model.config.vocab_size == 512
    assert (final / "tokenizer.json").exists() and (final / "tokenizer_config.json").exists()
    # HF generate / vLLM stop at the chat template's end of turn as well as at end of text
    from transformers import GenerationConfig

    tok = Tokenizer.load(final)
    gen = GenerationConfig.from_pretrained(final)
    assert gen.eos_token_id == [tok.end_id, tok.eos_id]
    assert (gen.bos_token_id, gen.pad_token_id) == (tok.bos_id, tok.pad_id)
    state = json.loads((final / "train_state" / "state.json").read_text())
    assert state["step"] == 40 and state["format_version"] == 1 and state["train_config"]["optimizer"] == optimizer


def test_grad_accumulation_matches_one_big_batch(data, tmp_path):
    """1 micro-batch of 8 and 4 micro-batches of 2 see the same 8 sequences: same losses, same update."""
    common = ["pretrain", "--data", str(data), *SHORT, "--steps", "2", "--dtype", "float32", "--eval-every", "0"]
    assert cli([*common, "--out", str(tmp_path / "a"), "--batch-size", "8"]) == 0
    assert cli([*common, "--out", str(tmp_path / "b"), "--batch-size", "2", "--grad-accum", "4"]) == 0
    a, b = train_records(tmp_path / "a"), train_records(tmp_path / "b")
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)
        assert rb["expert_maxvio"] == pytest.approx(ra["expert_maxvio"], rel=1e-6)
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step_0000002" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step_0000002" / "model.safetensors"))
    # Adam divides by sqrt(v): where a gradient entry is near epsilon, fp32 summation-order noise is amplified
    # up to a fraction of one lr-sized step. Every weight stays within 2% of the peak lr, and all but a few
    # entries in a thousand agree to 1e-6.
    diffs = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    assert diffs.max() < 0.02 * 3e-3
    assert (diffs > 1e-6).float().mean() < 1e-3


@pytest.mark.slow
def test_compiled_training_matches_eager(data, tmp_path):
    """--compile runs the same math through torch.compile: the same loss and grad norm within fp32 kernel-fusion
    noise (1e-4 relative; inductor reorders fp32 sums, measured ~1e-6), the same update, the same evaluation,
    and checkpoints with the plain parameter names (they load as ordinary models and resume without --compile).

    Sized for cost: inductor's time goes into g++, one call per generated kernel, and the MoE layer's graph breaks
    (data-dependent expert counts) multiply the graphs. One MoE layer (router, bias, routed and shared experts:
    the part with the breaks), one step (a second would recompile every graph for dynamic shapes), and scalar
    C++ kernels (vectorized ones compile ~2x slower and are inductor's own concern) keep what --compile wires
    up (Dynamo, AOT autograd, the optimizer on the compiled module, eval, checkpoints) at a fraction of the
    cost: 160 s -> 43 s measured on the same shared 2-core machine."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    common = ["pretrain", "--data", str(data), "--preset", "tiny", "--model", "num_hidden_layers=1", "--model",
              "first_k_dense_replace=0", "--model", "num_nextn_predict_layers=0", "--seq-len", "32", "--batch-size",
              "2", "--eval-batches", "1", "--steps", "1", "--dtype", "float32"]
    assert cli([*common, "--out", str(tmp_path / "eager")]) == 0
    counters.clear()
    with inductor_config.patch({"cpp.vec_isa_ok": False}):
        assert cli([*common, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    assert counters["stats"]["unique_graphs"] > 0  # the flag really compiled the model
    (a,), (b,) = train_records(tmp_path / "eager"), train_records(tmp_path / "compiled")
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert b["expert_maxvio"] == a["expert_maxvio"]  # the same routing
    ea, eb = ([r for r in read_log(tmp_path / run) if r["event"] == "eval"][0] for run in ("eager", "compiled"))
    assert eb["val_loss"] == pytest.approx(ea["val_loss"], rel=1e-4)
    assert read_log(tmp_path / "compiled")[0]["config"]["compile"] is True
    wa = load_file(str(tmp_path / "eager" / "checkpoints" / "step_0000001" / "model.safetensors"))
    ckpt = tmp_path / "compiled" / "checkpoints" / "step_0000001"
    wb = load_file(str(ckpt / "model.safetensors"))
    assert wb.keys() == wa.keys() and not any("_orig_mod" in k for k in wb)
    # the same update: Adam's first step is ~lr x sign(g), so an element whose gradient is ~0 may flip by up to
    # 2 lr under reordered sums; all but a few in a thousand agree to 1e-6
    diffs = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    assert diffs.max() <= 2 * 3e-3 + 1e-6 and (diffs > 1e-6).float().mean() < 1e-3
    nanoseek.load_model(ckpt)
    assert cli(["pretrain", "--data", str(data), "--out", str(tmp_path / "compiled"), "--resume", "--steps", "2",
                "--no-compile"]) == 0
    assert [r["step"] for r in train_records(tmp_path / "compiled")] == [1, 2]


def test_divergence_stops_with_clear_message_and_keeps_last_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    rc = cli(["pretrain", "--data", str(data), "--out", str(run), *SHORT, "--steps", "30", "--batch-size", "2",
              "--lr", "1e5", "--warmup-steps", "0", "--checkpoint-every", "1", "--eval-every", "0",
              "--dtype", "float32"])
    err = capsys.readouterr().err
    assert rc == 2
    last_good = train_records(run)[-1]["step"]
    assert f"training diverged at step {last_good + 1}" in err and "--lr" in err
    ckpt = run / "checkpoints" / f"step_{last_good:07d}"
    assert f"{ckpt}" in err
    assert (run / "checkpoints" / "latest").read_text().strip() == ckpt.name
    model = nanoseek.load_model(ckpt)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # nothing half-written


def test_pretrain_user_errors(data, tmp_path, capsys):
    def error(*args: str) -> str:
        assert cli(["pretrain", *args]) == 2
        return capsys.readouterr().err

    assert "nanoseek data prepare" in error("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    out = ["--data", str(data), "--out", str(tmp_path / "r")]
    assert "--warmup-steps (20) must not exceed --steps (5)" in error(*out, "--steps", "5", "--warmup-steps", "20")
    assert "--resume" in error(*out, "--resume")
    assert "--seq-len" in error(*out, "--seq-len", "4096", "--preset", "tiny", "--steps", "30")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.safetensors"))
    with pytest.raises(SystemExit):
        cli(["pretrain", *out, "--optimizer", "sgd"])
    assert "KEY=VALUE" in error(*out, "--model", "nope=1")
    assert "n_group" in error(*out, "--model", "n_group=3")  # ModelConfig validation names the field
    # a finished run is not silently overwritten; resuming may extend it but not change the data order
    assert cli(["pretrain", *out, *SHORT, "--steps", "2", "--batch-size", "2", "--eval-every", "0",
                "--model", "num_nextn_predict_layers=0"]) == 0
    assert nanoseek.ModelConfig.load(tmp_path / "r" / "checkpoints" / "step_0000002").num_nextn_predict_layers == 0
    assert "mtp_losses" not in train_records(tmp_path / "r")[-1]
    assert "--model overrides" in error(*out, "--resume", "--model", "num_nextn_predict_layers=1")
    assert "already holds a training run" in error(*out, *SHORT, "--steps", "2")
    assert "cannot change --seq-len" in error(*out, "--resume", "--seq-len", "16", "--steps", "3")
    assert cli(["pretrain", *out, "--resume", "--steps", "3"]) == 0
    assert [r["step"] for r in train_records(tmp_path / "r")] == [1, 2, 3]


# ---- pure pieces ------------------------------------------------------------------------------------------------
def test_schedules():
    kw = dict(total=100, peak=1.0, warmup=10, min_ratio=0.1)
    # warm-up: linear, first step already non-zero, peak reached at the end of warm-up
    assert lr_at(0, schedule="wsd", **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="wsd", **kw) == pytest.approx(1.0)
    # wsd: stable until the last 20% of steps, then linear down to exactly min at the last step
    assert lr_at(50, schedule="wsd", decay_frac=0.2, **kw) == 1.0
    assert lr_at(79, schedule="wsd", decay_frac=0.2, **kw) == 1.0
    assert lr_at(80, schedule="wsd", decay_frac=0.2, **kw) == pytest.approx(1 - 0.9 / 20)
    assert lr_at(99, schedule="wsd", decay_frac=0.2, **kw) == pytest.approx(0.1)
    wsd = [lr_at(s, schedule="wsd", **kw) for s in range(80, 100)]
    assert all(a > b for a, b in zip(wsd, wsd[1:]))
    # cosine: peak right after warm-up, half-way at the middle, min at the end, monotone
    cos = [lr_at(s, schedule="cosine", **kw) for s in range(10, 100)]
    assert all(a > b for a, b in zip(cos, cos[1:]))
    assert cos[-1] == pytest.approx(0.1) and cos[0] == pytest.approx(1.0, abs=1e-3)
    assert lr_at(54, schedule="cosine", **kw) == pytest.approx(0.55, abs=0.01)
    assert lr_at(99, schedule="constant", **kw) == 1.0
    # overlapping warm-up and decay (very short runs): the smaller factor
    assert lr_at(0, total=2, peak=1.0, warmup=2, schedule="wsd", decay_frac=1.0, min_ratio=0.0) == 0.5
    with pytest.raises(ValueError):
        lr_at(100, schedule="wsd", **kw)
    with pytest.raises(ValueError):
        lr_at(0, schedule="linear", **kw)


def test_orthogonalize_is_close_to_the_polar_factor():
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 32), (32, 64), (48, 48)]:
        m = torch.randn(*shape, generator=g)
        o = orthogonalize(m)
        s = torch.linalg.svdvals(o)
        assert s.min() > 0.6 and s.max() < 1.25, (shape, s.min(), s.max())  # all directions ~unit gain
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        polar = u @ vh
        cos = (o * polar).sum() / (o.norm() * polar.norm())
        assert cos > 0.97, (shape, cos)
    # stacked experts [E, out, in]: each expert on its own, exactly as if alone
    w = torch.randn(4, 24, 16, generator=g) * torch.tensor([1e-3, 1.0, 10.0, 1e3]).view(4, 1, 1)
    o = orthogonalize(w)
    for e in range(4):
        torch.testing.assert_close(o[e], orthogonalize(w[e]), rtol=0, atol=0)
        assert torch.linalg.svdvals(o[e]).max() < 1.25


def test_muon_groups_and_step():
    model = nanoseek.DeepSeekV3(preset("tiny"))
    adamw, muon = build_optimizers(model, name="muon", lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    assert isinstance(muon, Muon)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon_ids}
    assert "model.layers.1.mlp.experts.gate_up_proj" in names and "mtp.0.eh_proj.weight" in names
    assert not {n for n in names if "embed_tokens" in n or n.startswith("lm_head") or "mlp.gate." in n
                or "norm" in n}
    # weight decay on matrices only
    decayed = {id(p) for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.model.embed_tokens.weight) in decayed and id(model.model.norm.weight) not in decayed
    # one step: each expert's update has the same RMS (orthogonalized per expert), scaled as documented
    p = model.model.layers[1].mlp.experts.down_proj
    before = p.detach().clone()
    p.grad = torch.randn_like(p) * torch.logspace(-3, 3, p.shape[0]).view(-1, 1, 1)
    muon.step()
    delta = (p.detach() - before)
    rms = delta.pow(2).mean(dim=(1, 2)).sqrt()
    expected = 0.01 * 0.2  # orthogonal [out, in] has RMS 1/sqrt(max(out, in)); the scale undoes it
    assert torch.allclose(rms, torch.full_like(rms, expected), rtol=0.25), (rms, expected)


def test_muon_batches_parameters_of_one_shape_exactly_as_one_at_a_time():
    """Muon orthogonalizes same-shaped parameters (every layer's attention matrices, every MoE layer's expert
    stacks) as one batch: the step equals one optimizer per parameter, bit for bit."""
    torch.manual_seed(0)
    a = nanoseek.DeepSeekV3(preset("tiny"))
    b = nanoseek.DeepSeekV3(preset("tiny"))
    b.load_state_dict(a.state_dict())
    for pa, pb in zip(a.parameters(), b.parameters()):
        pa.grad = torch.randn_like(pa)
        pb.grad = pa.grad.clone()
    _, muon = build_optimizers(a, name="muon", lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    shapes = [tuple(p.shape) for g in muon.param_groups for p in g["params"]]
    assert len(set(shapes)) < len(shapes)  # some shapes are shared: batched
    by_name = dict(b.named_parameters())
    names = {id(p): n for n, p in a.named_parameters()}
    alone = [Muon([by_name[names[id(p)]]], lr=0.01, weight_decay=0.1) for g in muon.param_groups for p in g["params"]]
    for _ in range(2):
        muon.step()
        for opt in alone:
            opt.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n


def test_flops_per_token_and_mfu():
    cfg = preset("cpu-small")
    T = 256
    f = flops_per_token(cfg, T)
    pc = count_params(cfg)
    assert f.weights == 6 * pc.active_non_embedding
    assert f.head == 6 * cfg.hidden_size * cfg.vocab_size
    # d_qk = d_v = d gives the textbook 12 x L x H x d x T
    sq = cfg.replace(qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=32)
    textbook = 12 * sq.num_hidden_layers * 8 * 32 * T  # every token attending to all T keys
    assert attention_flops_per_token(sq, T, causal=False) * sq.num_hidden_layers == textbook
    assert attention_flops_per_token(sq, T) * sq.num_hidden_layers == textbook * (T + 1) / (2 * T)  # causal
    main = f.total - f.mtp
    assert 33e6 < main < 35e6  # ~34 MFLOP per trained token without MTP (docs/performance.md §2.1)
    assert f.mtp > 0 and flops_per_token(preset("cpu-small-dense"), T).mtp == 0
    assert mfu(1000.0, 36e6, 72e9) == pytest.approx(0.5)
    assert table_peak("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert table_peak("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert table_peak("Some GPU", torch.bfloat16) is None
    assert measure_matmul_peak("cpu", torch.float32, n=256, seconds=0.05) > 1e8


def test_every_train_setting_is_a_flag_and_resume_merge():
    from nanoseek.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["pretrain"].format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text, name
    cfg, changes = merge_for_resume(TrainConfig(steps=10).to_dict(), {"steps": 20, "lr": 1e-3})
    assert cfg.steps == 20 and changes == {"steps": (10, 20), "lr": (3e-3, 1e-3)}
    with pytest.raises(ValueError, match="--optimizer"):
        merge_for_resume(TrainConfig().to_dict(), {"optimizer": "muon"})
    assert merge_for_resume(TrainConfig().to_dict(), {"batch_size": 3})[0].batch_size == 3  # batch ramps are fine
