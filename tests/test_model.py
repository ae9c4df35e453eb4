"""Behaviour of the model itself: causality, gradients, routing, balancing, MTP targets, rope, counts."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DeepseekV3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import nanoseek
from nanoseek.config import preset, yarn
from nanoseek.hf import dequantize_fp8
from nanoseek.model import IGNORE_INDEX, count_params
from nanoseek.model.moe import route, sequence_balance_loss
from nanoseek.model.rope import rope_inv_freq, softmax_scale

from conftest import randomize_


def _model(bias_std=0.5, **overrides):
    m = nanoseek.DeepSeekV3(preset("tiny", **overrides))
    randomize_(m, bias_std)
    return m


def test_future_tokens_never_change_earlier_logits():
    model = _model().eval()
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        base = model(ids)
        for j in (5, 12, 19):
            changed = ids.clone()
            changed[:, j] = (changed[:, j] + 7) % 256
            out = model(changed)
            assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6, rtol=0)
            assert (out[:, j] - base[:, j]).abs().max() > 1e-4  # the changed position itself does change


def test_gradients_reach_every_trainable_parameter():
    model = _model(bias_std=0.0, aux_loss_alpha=1e-2).train()  # zero biases: every expert gets tokens
    ids = torch.randint(0, 256, (4, 64))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    assert out.balance_loss is not None and out.balance_loss.item() > 0
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"no gradient reached: {no_grad}"
    # every routed expert of every MoE layer got tokens, so every expert slice has a gradient
    for name, p in model.named_parameters():
        if name.endswith("experts.gate_up_proj"):
            assert (p.grad.flatten(1).abs().sum(1) > 0).all(), name
    # the correction bias is a buffer: never part of autograd
    assert all(not r.e_score_correction_bias.requires_grad for r in model.routers())


def test_route_bias_selects_but_does_not_weight():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.2]])
    bias = torch.tensor([0.0, 0.0, 1.0, 1.0])
    w, idx = route(scores, bias, top_k=2, n_group=1, topk_group=1, norm_topk_prob=False, scaling=1.0)
    assert sorted(idx[0].tolist()) == [2, 3]  # the bias decides which experts ...
    assert sorted(w[0].tolist()) == pytest.approx([0.1, 0.2])  # ... the unbiased scores weight them
    w, _ = route(scores, bias, top_k=2, n_group=1, topk_group=1, norm_topk_prob=True, scaling=2.5)
    assert w.sum().item() == pytest.approx(2.5)


def test_route_masks_excluded_groups_with_minus_inf_even_with_negative_biases():
    # group 0 = experts 0,1 (kept: top-2 sum 1.7), group 1 = experts 2,3 (excluded)
    scores = torch.tensor([[0.9, 0.8, 0.3, 0.2]])
    bias = torch.tensor([-2.0, -2.0, 0.0, 0.0])  # biased scores in the kept group are negative
    _, idx = route(scores, bias, top_k=2, n_group=2, topk_group=1, norm_topk_prob=True, scaling=1.0)
    # group scores with bias: g0 = -1.1 + -1.2 = -2.3, g1 = 0.5 -> group 1 is kept, experts 2 and 3 chosen
    assert sorted(idx[0].tolist()) == [2, 3]
    bias = torch.tensor([0.0, 0.0, -5.0, -5.0])  # now group 0 wins; masked group 1 must never be picked
    _, idx = route(scores, bias, top_k=2, n_group=2, topk_group=1, norm_topk_prob=True, scaling=1.0)
    assert sorted(idx[0].tolist()) == [0, 1]
    # the case a 0.0 mask gets wrong: kept experts score below zero, masked ones at 0 would win
    scores = torch.tensor([[0.1, 0.1, 0.9, 0.9, 0.5, 0.5]])
    bias = torch.tensor([0.0, 0.0, -3.0, -3.0, 1.0, 1.0])
    _, idx = route(scores, bias, top_k=2, n_group=3, topk_group=1, norm_topk_prob=True, scaling=1.0)
    assert sorted(idx[0].tolist()) == [4, 5]
    bias = torch.tensor([-3.0, -3.0, -3.0, -3.0, -2.0, -2.0])  # all biased scores negative; group 2 kept
    _, idx = route(scores, bias, top_k=2, n_group=3, topk_group=1, norm_topk_prob=True, scaling=1.0)
    assert sorted(idx[0].tolist()) == [4, 5]


def test_sequence_balance_loss_is_minimal_for_uniform_routing():
    B, T, E, K = 2, 64, 8, 2

    def loss_for(indices):  # affinities consistent with the routing: high for chosen experts
        scores = torch.full((B, T, E), 0.1).scatter(-1, indices, 0.9)
        return sequence_balance_loss(scores, indices, E, K).item()

    cycling = torch.stack([torch.arange(T) % E, (torch.arange(T) + 1) % E], -1).expand(B, T, K)
    balanced = loss_for(cycling)
    assert balanced == pytest.approx(1.0, abs=1e-6)
    assert sequence_balance_loss(torch.full((B, T, E), 0.5), cycling, E, K).item() == pytest.approx(1.0)
    half = cycling.clone()
    half[:, : T // 2] = torch.tensor([0, 1])
    collapsed = torch.tensor([0, 1]).expand(B, T, K)
    assert balanced < loss_for(half) < loss_for(collapsed)
    assert loss_for(collapsed) > 2.5


def test_bias_update_moves_expert_load_towards_balance():
    model = _model(bias_std=0.0, n_group=1, topk_group=1).eval()
    n_main = sum(layer.is_moe for layer in model.model.layers)
    for r in model.routers():
        r.e_score_correction_bias[:2] = 0.3  # start badly skewed towards experts 0 and 1
    ids = torch.randint(0, 256, (4, 64))

    def imbalance():
        with torch.no_grad():
            c = model.hidden_states(ids).expert_counts[:n_main].float()  # MTP needs targets: main only
        return (c.max(1).values / c.mean(1)), c

    before, _ = imbalance()
    for _ in range(80):
        _, counts = imbalance()
        model.update_router_biases(torch.cat((counts, torch.zeros(len(model.mtp), counts.shape[1]))), gamma=0.01)
    after, _ = imbalance()
    assert (after < before).all(), (before, after)
    assert after.max() < 0.6 * before.min()
    bias = model.routers()[0].e_score_correction_bias  # the overloaded experts' biases went down
    assert bias[:2].max() < 0.3 - 0.1


@pytest.mark.parametrize("rule, gamma, steps", [("sign", 0.01, 80), ("proportional", 0.03, 25)])
def test_a_router_started_skewed_comes_into_balance(rule, gamma, steps):
    """Both bias rules bring a router that sends most tokens to two experts to MaxVio <= 0.5 within the stated
    steps (the proportional rule several times faster: its step grows with the load error), and keep it there."""
    from nanoseek.model.moe import load_stats

    model = _model(bias_std=0.0, n_group=1, topk_group=1).eval()
    n_main = sum(layer.is_moe for layer in model.model.layers)
    for r in model.routers():
        r.e_score_correction_bias[:2] = 1.0  # experts 0 and 1 win every token
    torch.manual_seed(0)
    batches = [torch.randint(0, 256, (4, 64)) for _ in range(8)]

    def counts(step):
        with torch.no_grad():
            return model.hidden_states(batches[step % len(batches)]).expert_counts[:n_main].float()

    assert min(load_stats(counts(0))[0]) > 2.0  # badly skewed at the start
    window, history = [], []  # MaxVio of the loads summed over the last 8 steps (one batch alone is noisy)
    for step in range(steps + 40):
        c = counts(step)
        window = (window + [c])[-8:]
        history.append(max(load_stats(sum(window))[0]))
        model.update_router_biases(torch.cat((c, torch.zeros(len(model.mtp), c.shape[1]))), gamma=gamma, rule=rule)
    assert max(history[steps:]) <= 0.5, history  # balanced within `steps`, and it stays so


def test_bias_rules_move_by_the_stated_amounts():
    from nanoseek.model.moe import bias_update

    counts = torch.tensor([30.0, 10.0, 0.0, 0.0])  # mean 10
    b = torch.zeros(4)
    bias_update(b, counts, 0.1, "sign")
    assert b.tolist() == pytest.approx([-0.1, 0.0, 0.1, 0.1])
    b = torch.zeros(4)
    bias_update(b, counts, 0.1, "proportional")
    assert b.tolist() == pytest.approx([-0.2, 0.0, 0.1, 0.1])  # gamma x (mean - c) / mean
    with pytest.raises(ValueError, match="unknown bias update rule"):
        bias_update(b, counts, 0.1, "pid")


def test_mtp_depth_k_predicts_token_offset_k_plus_1():
    model = _model(num_nextn_predict_layers=2).eval()
    ids = torch.randint(0, 256, (2, 16))
    targets = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        out = model(ids, targets=targets)
        assert len(out.mtp_losses) == 2
        # recompute depth 1 by hand from the documented equations (docs/architecture.md §5.1): h^0 final-normed,
        # input Emb(t_{i+1}), targets[:, 1:] (= t_{i+2} for targets = next tokens)
        T = ids.shape[1]
        cos, sin = model.rotary(torch.arange(T - 1), torch.float32)
        m1 = model.mtp[0]
        h1, _ = m1(out.hidden[:, : T - 1], model.model.embed_tokens(ids[:, 1:]), cos, sin)
        ref = F.cross_entropy(model.lm_head(m1.shared_head.norm(h1)).flatten(0, 1), targets[:, 1:].flatten())
        assert torch.allclose(out.mtp_losses[0], ref, atol=1e-6)
        # depth k only reads targets k..T-1: changing targets before k leaves it alone
        for k in (1, 2):
            t2 = targets.clone()
            t2[:, :k] = (t2[:, :k] + 1) % 256
            out2 = model(ids, targets=t2)
            assert torch.equal(out2.mtp_losses[k - 1], out.mtp_losses[k - 1])
            assert not torch.equal(out2.main_loss, out.main_loss)
            t3 = targets.clone()
            t3[:, k] = (t3[:, k] + 1) % 256
            assert not torch.equal(model(ids, targets=t3).mtp_losses[k - 1], out.mtp_losses[k - 1])
        # the total loss weights MTP by lambda / D
        assert torch.allclose(out.loss, out.main_loss + 0.3 / 2 * (out.mtp_losses[0] + out.mtp_losses[1]))


def test_ignore_index_masks_positions():
    model = _model().eval()
    ids = torch.randint(0, 256, (1, 12))
    tgt = torch.randint(0, 256, (1, 12))
    masked = tgt.clone()
    masked[:, :6] = IGNORE_INDEX
    with torch.no_grad():
        logits = model(ids)
        out = model(ids, targets=masked)
        ref = F.cross_entropy(logits[0, 6:], tgt[0, 6:])
    assert torch.allclose(out.main_loss, ref, atol=1e-6)


def test_yarn_frequencies_and_scales_match_transformers():
    for cfg in (preset("deepseek-v3"), preset("tiny", rope_scaling=yarn(4.0, 32), max_position_embeddings=128)):
        hf_cfg = DeepseekV3Config(**{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")})
        inv, factor = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg)
        assert torch.allclose(rope_inv_freq(cfg), inv, rtol=1e-6, atol=0)
        assert factor == pytest.approx(1.0)
    v3 = preset("deepseek-v3")
    # docs/architecture.md §2.4: 192^-1/2 * (1 + 0.1 ln 40)^2
    assert softmax_scale(v3) == pytest.approx(0.135234, abs=1e-6)
    f = rope_inv_freq(v3)
    base = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float32) / 64)
    assert torch.allclose(f[:11], base[:11])  # j <= lo = 10 untouched
    assert torch.allclose(f[23:], base[23:] / 40)  # j >= hi = 23 fully interpolated


def test_fp8_block_dequantization_handles_ragged_edges():
    w = torch.randn(300, 200)
    block = (128, 128)
    scales = torch.rand(math.ceil(300 / 128), math.ceil(200 / 128)) + 0.5
    expanded = scales.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    q = (w / expanded).to(torch.float8_e4m3fn)
    deq = dequantize_fp8(q, scales, block, torch.float32)
    assert deq.shape == w.shape
    assert torch.allclose(deq, q.float() * expanded)
    assert (deq - w).abs().max() < 0.07 * w.abs().max()  # e4m3 keeps ~3 significant bits
    assert deq[299, 199] == q[299, 199].float() * scales[2, 1]  # last partial block uses its own scale


def test_param_counts_match_published_sizes_and_the_real_module():
    v3 = count_params(preset("deepseek-v3"))
    assert round(v3.total / 1e9, 1) == 671.0  # "671B"
    assert round(v3.active / 1e9, 1) == 37.6 or round(v3.active / 1e9, 1) == 37.5  # DeepSeek: 37B (+routers)
    # DeepSeek's README: 11.5B unique MTP params; we count 11.6B (docs/architecture.md §1.4)
    assert round(v3.mtp / 1e9, 1) == 11.6
    ml = count_params(preset("moonlight-16b-a3b"))
    assert round(ml.total / 1e9, 1) == 16.0 and round(ml.active / 1e9, 1) == 2.9
    cfg = preset("tiny")
    model = nanoseek.DeepSeekV3(cfg)
    real = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp."))
    pc = count_params(cfg)
    assert pc.total == real
    assert pc.embedding == 2 * cfg.vocab_size * cfg.hidden_size
    unused = (cfg.n_routed_experts - cfg.num_experts_per_tok) * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    assert pc.active == real - cfg.num_moe_layers * unused


def test_router_stays_fp32_when_the_model_is_cast():
    model = _model().to(torch.bfloat16)
    for r in model.routers():
        assert r.weight.dtype == torch.float32 and r.e_score_correction_bias.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        assert model(ids).dtype == torch.bfloat16


def test_bf16_autocast_forward_close_to_fp32():
    model = _model().eval()
    ids = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        ref = model(ids, targets=ids).main_loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids, targets=ids).main_loss
    assert abs(low.item() - ref.item()) < 0.05 * ref.item()


def test_input_validation_messages():
    model = _model()
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="targets shape"):
        model(torch.zeros(2, 3, dtype=torch.long), targets=torch.zeros(2, 4, dtype=torch.long))


def test_chunked_head_loss_matches_plain_cross_entropy_and_its_gradients():
    from nanoseek.model.loss import linear_cross_entropy

    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    t[::5] = IGNORE_INDEX
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=IGNORE_INDEX)
    gh, gw = torch.autograd.grad(2 * ref, (h, w))
    got = linear_cross_entropy(h, w, t, chunk_elems=50 * 8)  # 8 rows per chunk: 5 chunks, a ragged last one
    gh2, gw2 = torch.autograd.grad(2 * got, (h, w))
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(gh2, gh, atol=1e-5) and torch.allclose(gw2, gw, atol=1e-5)
    # the model's loss equals cross-entropy over its own logits
    model = _model().eval()
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        out = model(ids, targets=ids)
        assert torch.allclose(out.main_loss, F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()), atol=1e-5)


def test_bf16_head_loss_equals_cross_entropy_over_the_bf16_logits_even_when_a_target_underflows():
    """Under bf16 the loss takes lse from the softmax's largest probability (no fp32 copy of the logits):
    within bf16 rounding of the fp32 cross-entropy over the same bf16 logits (what transformers computes), and
    finite when the target's probability underflows to 0."""
    from nanoseek.model.loss import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(300, 32, requires_grad=True)
    t = torch.randint(0, 300, (64,))
    with torch.no_grad():
        w[t[0]] = -40 * h[0] / h[0].norm()  # row 0: the target's logit is ~200 below the others
    logits = (h.bfloat16() @ w.bfloat16().t()).float()
    ref = F.cross_entropy(logits, t)
    gh, gw = torch.autograd.grad(ref, (h, w))
    got = linear_cross_entropy(h, w, t, torch.bfloat16)
    gh2, gw2 = torch.autograd.grad(got, (h, w))
    assert torch.isfinite(got) and abs(got.item() - ref.item()) < 4e-3 * ref.item()
    torch.testing.assert_close(gh2, gh, atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(gw2, gw, atol=2e-3, rtol=2e-2)
    # an ignored position reads target 0; its probability underflowing must not reach the loss (no -inf * 0)
    t_ign = t.clone()
    t_ign[0] = IGNORE_INDEX
    with torch.no_grad():
        w[0] = -40 * h[0] / h[0].norm()
    logits = (h.bfloat16() @ w.bfloat16().t()).float()
    ref = F.cross_entropy(logits, t_ign, ignore_index=IGNORE_INDEX)
    got = linear_cross_entropy(h, w, t_ign, torch.bfloat16)
    assert torch.isfinite(got) and abs(got.item() - ref.item()) < 4e-3 * ref.item()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(got, (h, w)))


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                              (torch.bfloat16, torch.bfloat16)])
def test_rmsnorm_backward_written_out_equals_autograd_through_the_definition(x_dtype, w_dtype):
    """RMSNorm's training path (_RMSNorm, hand-written backward) gives the values and gradients of autograd
    through its definition, rms_norm(x in fp32).to(x.dtype) * weight."""
    from nanoseek.model.layers import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(48).to(w_dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(3, 5, 48) * 3).to(x_dtype).requires_grad_()
    g = torch.randn(3, 5, 48)
    got = norm(x)
    got_grads = torch.autograd.grad(got, (x, norm.weight), g.to(got.dtype))
    ref = F.rms_norm(x.float(), (48,), eps=norm.eps).to(x.dtype) * norm.weight
    ref_grads = torch.autograd.grad(ref, (x, norm.weight), g.to(ref.dtype))
    assert got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    tol = dict(atol=1e-5, rtol=1e-5) if x_dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for a, b in zip(got_grads, ref_grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)
    if x_dtype == torch.float32:
        # a row whose mean square overflows fp32: zeros forward, and a NaN gradient rather than a silent zero,
        # so that the training loop's divergence check stops at that step
        big = torch.ones(2, 48)
        big[0] = 1e30
        big.requires_grad_()
        out = norm(big)
        (gx,) = torch.autograd.grad(out.sum(), big)
        assert (out[0] == 0).all() and torch.isnan(gx[0]).all() and torch.isfinite(gx[1]).all()


def test_target_logprob_read_from_the_softmax_equals_log_softmax_on_both_paths():
    """The head loss reads log p(target) from its softmax. On a CPU (host check) and on the accelerators' path
    (lse from the row's max) it equals log_softmax over the same logits, in fp32 and within bf16 rounding,
    also for a row whose target probability underflows (~200 nats below the best)."""
    from nanoseek.model.loss import _target_logprob

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    t = torch.randint(0, 50, (6, 1))
    logits[0, t[0, 0]] = logits[0].max() - 200
    for dtype, atol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-3)):
        lg = logits.to(dtype)
        ref = torch.log_softmax(lg.float(), dim=-1).gather(1, t)
        probs = torch.softmax(lg, dim=-1)
        for on_host in (True, False):
            got = _target_logprob(lg, probs, t, check_on_host=on_host)
            assert got.dtype == torch.float32 and torch.isfinite(got).all()
            torch.testing.assert_close(got, ref, atol=atol, rtol=0)


@pytest.mark.parametrize("blocks", [2, 3, 7])
def test_causal_attention_in_query_blocks_equals_the_whole_square(monkeypatch, blocks):
    """Causal self-attention split into query blocks, each against the keys up to its last query, gives what
    the fused kernel gives over the whole square, values and gradients, for ragged blocks too (7 queries in 2,
    3 or 7 blocks)."""
    from nanoseek.model import attention

    monkeypatch.setattr(attention, "CAUSAL_BLOCKS", blocks)
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 7, d, requires_grad=True) for d in (12, 12, 8))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    g_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    got = attention.matmul_attention(q, k, v, None, True, 0.3)
    g_got = torch.autograd.grad(got.square().sum(), (q, k, v))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["causal", "mask", "cache"])
def test_matmul_attention_equals_the_fused_kernel(case):
    """The CPU attention path (two matmuls around a softmax) computes what scaled_dot_product_attention does,
    values and gradients, for training (causal, which runs in query blocks), a given bool mask (padding) and new
    tokens over a longer cached context; in bf16 within bf16 rounding."""
    from nanoseek.model.attention import matmul_attention, use_matmul_attention

    torch.manual_seed(0)
    B, H, S, T, D, Dv = 2, 3, 5, 5 if case != "cache" else 9, 12, 8
    q, k, v = torch.randn(B, H, S, D), torch.randn(B, H, T, D), torch.randn(B, H, T, Dv)
    mask = None
    if case != "causal":
        mask = torch.arange(T) <= (torch.arange(S) + T - S)[:, None]  # query i sees keys up to its position
        mask = mask.expand(B, 1, S, T).clone()
        mask[1, :, :, 0] = False  # and row 1 never sees its first key (left padding)
    causal = case == "causal"
    for dtype, atol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        qq, kk, vv = (x.to(dtype).requires_grad_() for x in (q, k, v))
        ref = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, is_causal=causal, scale=0.3)
        g_ref = torch.autograd.grad(ref.float().square().sum(), (qq, kk, vv))
        got = matmul_attention(qq, kk, vv, mask, causal, 0.3)
        g_got = torch.autograd.grad(got.float().square().sum(), (qq, kk, vv))
        torch.testing.assert_close(got.float(), ref.float(), atol=atol, rtol=0)
        for a, b in zip(g_got, g_ref):
            torch.testing.assert_close(a.float(), b.float(), atol=atol * 4, rtol=0.05 if dtype != torch.float32 else 0)
    assert use_matmul_attention(q, k, 0.0) and not use_matmul_attention(q, k, 0.1)
    assert not use_matmul_attention(torch.empty(1, 16, 4096, 1, device="meta"), torch.empty(1, 16, 4096, 1), 0.0)
