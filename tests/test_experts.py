"""Every routed-experts implementation computes what the reference (a plain per-expert loop) computes: values
for all of them, gradients for the one that trains, in fp32 and bf16, with idle experts and one-token steps;
and `choose` picks the implementation the table in nanoseek.model.experts promises."""

import pytest
import torch

from nanoseek.model import experts as X
from nanoseek.model.packed import PackedExperts

E, D, I, K = 6, 16, 24, 2  # F.grouped_mm needs widths that are multiples of 8


def _case(n_tokens: int, dtype=torch.float32, idle=(1, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    gate_up = (torch.randn(E, 2 * I, D, generator=g) * 0.3).to(dtype)
    down = (torch.randn(E, D, I, generator=g) * 0.3).to(dtype)
    x = torch.randn(n_tokens, D, generator=g).to(dtype)
    busy = torch.tensor([e for e in range(E) if e not in idle])
    scores = torch.rand(n_tokens, len(busy), generator=g)
    indices = busy[scores.topk(K, dim=-1).indices]  # experts in `idle` never receive a token
    weights = torch.rand(n_tokens, K, generator=g)
    return x, weights, indices, gate_up, down


# fp32: only summation order differs (measured <= 1e-6 on outputs of magnitude ~4). bf16: the same bf16
# products through different kernels (mm, bmm, einsum, grouped_mm); measured identical on this CPU, and
# the tolerance leaves room for kernels that accumulate in another order elsewhere.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


# grouped_mm is bf16 only (choose() never picks it otherwise; its forward also runs on the CPU build);
# one_token serves single-token steps only
CASES = [(impl, dt, n) for impl in ("grouped", "sorted", "indexed") for dt in ("fp32", "bf16") for n in (1, 13)]
CASES += [("one_token", dt, 1) for dt in ("fp32", "bf16")] + [("grouped_mm", "bf16", n) for n in (1, 13)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("impl,dtype_name,n_tokens", CASES)
def test_every_implementation_equals_the_reference(impl, dtype_name, n_tokens):
    dtype = DTYPES[dtype_name]
    x, w, idx, gu, dn = _case(n_tokens, dtype)
    ref = X.experts(x, w, idx, gu, dn, impl="reference")
    packed = PackedExperts(gu, dn)
    with torch.no_grad():
        got = X.experts(x, w, idx, gu, dn, packed=packed, impl=impl)
    assert got.dtype == torch.float32 and got.shape == (n_tokens, D)
    torch.testing.assert_close(got, ref, atol=TOL[dtype], rtol=0)


def test_grouped_gradients_equal_the_reference_including_idle_experts():
    x, w, idx, gu, dn = _case(13)
    x, w, gu, dn = (t.clone().requires_grad_() for t in (x, w, gu, dn))
    gy = torch.randn(13, D)
    ref = X.experts(x, w, idx, gu, dn, impl="reference")
    g_ref = torch.autograd.grad(ref, (x, w, gu, dn), gy)
    out = X.experts(x, w, idx, gu, dn)  # gradients needed: choose() takes `grouped`
    g_out = torch.autograd.grad(out, (x, w, gu, dn), gy)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert g_out[2][1].abs().sum() == 0 and g_out[3][4].abs().sum() == 0  # idle experts get zero gradient


@pytest.mark.parametrize("grouped_mm", [True, False])
def test_grouped_matmuls_as_grouped_gemms_or_a_loop_give_the_same_gradients(monkeypatch, grouped_mm):
    """`grouped` multiplies the experts' blocks with F.grouped_mm where it runs (every CPU dtype, CUDA bf16)
    and with a loop of matmuls elsewhere: both equal the reference, in values and gradients."""
    monkeypatch.setattr(X, "use_grouped_mm", lambda *a: grouped_mm)
    test_grouped_gradients_equal_the_reference_including_idle_experts()


def test_grouped_gradients_under_bf16_autocast_follow_the_reference():
    x, w, idx, gu, dn = _case(13)
    gu, dn = gu.requires_grad_(), dn.requires_grad_()
    gy = torch.randn(13, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = X.experts(x, w, idx, gu, dn, impl="reference")
        g_ref = torch.autograd.grad(ref, (gu, dn), gy)
        out = X.experts(x, w, idx, gu, dn)
        g_out = torch.autograd.grad(out, (gu, dn), gy)
    assert g_out[0].dtype == torch.float32  # fp32 master weights get fp32 gradients
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=0)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a.float(), b.float(), atol=6e-2, rtol=0)


def test_choose_follows_the_table(monkeypatch):
    x, w, idx, gu, dn = _case(13)
    packed = PackedExperts(gu, dn)
    assert X.choose(x, idx, gu.clone().requires_grad_(), None) == "grouped"  # training
    with torch.no_grad():
        assert X.choose(x, idx, gu, None) == "grouped"  # the model's own forward, evaluation
        assert X.choose(x, idx, gu, packed) == "sorted"  # generation, many tokens
        assert X.choose(x[:1], idx[:1], gu, packed) == "one_token"
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert X.choose(x, idx, gu, packed) == "indexed"  # 26 copies <= 8 x 6 experts
        big = torch.zeros(40, K, dtype=torch.long)
        assert X.choose(x, big, gu, packed) == "sorted"  # too many copies to gather weights for


@pytest.mark.cuda
def test_cuda_generation_takes_grouped_mm_and_equals_the_reference():
    x, w, idx, gu, dn = (t.cuda() for t in _case(13, torch.bfloat16))
    packed = PackedExperts(gu, dn)
    with torch.no_grad():
        assert X.choose(x, idx, gu, packed) == "grouped_mm"
        assert X.choose(x, idx, gu, None) == "grouped_mm"
        got = X.experts(x, w, idx, gu, dn, packed=packed)
        assert X.choose(x, idx, gu[:, :-4], packed) == "sorted"  # widths grouped_mm cannot take: fall back
    torch.testing.assert_close(got, X.experts(x, w, idx, gu, dn, impl="reference"), atol=3e-2, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("grouped_mm", [False, True])
def test_cuda_training_follows_the_reference_under_bf16_autocast(monkeypatch, grouped_mm):
    """On CUDA in bf16 the training implementation's forward, input and weight gradients follow the reference,
    as the loop of matmuls CUDA training takes and as grouped GEMMs (which decides whether it may take them)."""
    monkeypatch.setattr(X, "use_grouped_mm", lambda *a: grouped_mm)
    x, w, idx, gu, dn = (t.cuda() for t in _case(13))
    x, gu, dn = (t.clone().requires_grad_() for t in (x, gu, dn))
    gy = torch.randn(13, D, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = X.experts(x, w, idx, gu, dn, impl="reference")
        g_ref = torch.autograd.grad(ref, (x, gu, dn), gy)
        out = X.experts(x, w, idx, gu, dn)
        g_out = torch.autograd.grad(out, (x, gu, dn), gy)
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=0)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a.float(), b.float(), atol=6e-2, rtol=0)
