"""Compute accounting: model FLOPs per trained token, the device's matmul peak, and MFU.

FLOPs per token (training: forward + backward = 3 x forward, a matmul costs 2 FLOPs per multiply-add):

* Weight matmuls: every weight a token passes through costs 2 FLOPs forward and 4 backward, so
  6 x N where N is the active non-embedding parameter count (`count_params(...).active_non_embedding`:
  attention projections incl. MLA's kv_b_proj expansion of the latent, dense FFNs, the shared experts, the
  K routed experts a token uses, and the router's d x E scoring matrix). Norm weights are counted too:
  they are < 0.1% of N and keep the figure tied to one exact count. The embedding lookup is free.
* Output head: 6 x d x V (a matmul, although it is an "embedding-sized" tensor).
* Attention core, MLA training path: per layer and token the scores q.k over T keys cost 2 x H x d_qk x T
  (d_qk = qk_nope_head_dim + qk_rope_head_dim, since the training path expands keys per head) and the
  value sum 2 x H x d_v x T, so 6 x H x (d_qk + d_v) x T with backward. With d_qk = d_v = d_head this is the
  familiar 12 x H x d_head x T per layer (PaLM appendix B, nanoGPT's estimate_mfu). We count all T keys,
  as those do, so MFU figures compare across projects; a causal kernel does about half of this work.
* MTP depth k: its own layer (6 x its active parameters, eh_proj included), the shared output head again
  (6 x d x V) and its attention (same formula; its sequence is T - k, counted as T).

MFU = achieved model FLOP/s / peak FLOP/s of the devices used. The peak is either the vendor's dense figure
for known GPUs or a matmul measured on this device in this dtype (`measure_matmul_peak`), which is the
honest ceiling on CPUs, where no datasheet number applies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from nanoseek.config import ModelConfig


@dataclass(frozen=True)
class FlopCounts:
    """Training FLOPs per token (forward + backward), split by where they go."""
    weights: int  # 6 x active non-embedding parameters of the main model
    head: int  # 6 x d x V
    attention: int  # 6 x L x H x (d_qk + d_v) x T
    mtp: int  # all MTP depths together (weights, head, attention)

    @property
    def total(self) -> int:
        return self.weights + self.head + self.attention + self.mtp


def attention_flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """One MLA layer's attention core (scores + value sum), forward + backward, per token."""
    H = config.num_attention_heads
    return 6 * H * (config.qk_head_dim + config.v_head_dim) * seq_len


def flops_per_token(config: ModelConfig, seq_len: int) -> FlopCounts:
    from nanoseek.model import count_params

    pc = count_params(config)
    head = 6 * config.hidden_size * config.vocab_size
    attn = attention_flops_per_token(config, seq_len)
    D = config.num_nextn_predict_layers
    return FlopCounts(
        weights=6 * pc.active_non_embedding,
        head=head,
        attention=config.num_hidden_layers * attn,
        mtp=6 * pc.mtp_active + D * (head + attn),
    )


# Dense (no sparsity) peak FLOP/s from the vendors' datasheets, by substring of the CUDA device name.
# "float32" is plain FP32 (no TF32); SXM figures for H100/H200.
GPU_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "float32": 51e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H800": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
}


def table_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak for a known GPU name, else None. Longer names first ("H100 PCIe" before "H100")."""
    key = str(dtype).removeprefix("torch.")
    for name in sorted(GPU_PEAKS, key=len, reverse=True):
        if name in device_name:
            return GPU_PEAKS[name].get(key)
    return None


def measure_matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16, n: int | None = None,
                        seconds: float = 0.5) -> float:
    """FLOP/s of a square n x n matmul on this device in this dtype: the best of repeated timings over about
    `seconds` (best, not median: the peak is what the hardware can do, noise only ever slows it down).
    n defaults to 2048 on CPUs and 8192 on GPUs (smaller GEMMs do not fill a GPU)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm-up: first-call kernel selection and allocation
    sync()
    best, start = float("inf"), time.perf_counter()
    reps = 0
    while reps < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where it came from): the datasheet for known GPUs, else a measured matmul."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = table_peak(name, dtype)
        if peak is not None:
            return peak, f"datasheet ({name})"
    return measure_matmul_peak(device, dtype), f"measured {str(dtype).removeprefix('torch.')} matmul"


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the peak FLOP/s (of all devices used)."""
    return tokens_per_s * flops_per_token / peak if peak > 0 else 0.0
