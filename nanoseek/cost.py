"""Compute accounting: FLOPs per token from the architecture, the hardware table, MFU, GPU-hours and dollars.

FLOPs per token are counted from the shapes (DeepSeek-V3 report section 2; HF `DeepseekV3Config` names):

* A matmul costs 2 FLOPs per multiply-add, so every weight a token passes through costs 2 FLOPs forward.
  Per layer: MLA's query path (q_a_proj + q_b_proj with query compression, else one q_proj), kv_a_proj
  (latent + shared rope key), kv_b_proj (the training path expands the latent into per-head keys and values
  for every token), o_proj; the FFN: a dense SwiGLU (3 d I) in the first `first_k_dense_replace` layers,
  else the K routed experts a token uses plus the shared experts (3 d I_m each) and the router's d x E
  scores. Norm scales (and biases, if any) are counted as 2 FLOPs per weight too, as 6N counts them: < 0.1%
  of the total, and it keeps the sum equal to 2 x the active non-embedding parameter count (a test checks it).
* Attention core per layer and token: the scores q.k cost 2 d_qk per key and head, the value sum 2 d_v.
  Token t of a T-long sequence sees t keys, (T + 1) / 2 on average, as a causal kernel computes it; this is
  what the training log records, what `nanoseek cost` and the report card print. `causal=False` counts all T
  keys, as PaLM (appendix B) and nanoGPT's estimate_mfu do: logs written before 2026-12-06 counted so, and
  `summarize_run` converts them.
* Output head: 2 d V (the embedding lookup is free).
* MTP depth k (DeepSeek-V3 section 2.2): eh_proj (2d -> d), one full MoE decoder layer with its own
  attention (its sequence is T - k long; counted as T), and the shared output head computed again.
* Training = forward + backward = 3 x forward (the backward computes gradients for both the activations and
  the weights: two matmuls for each forward one). Recomputation, the optimizer step, softmax, RoPE and
  activations are not model FLOPs (MFU leaves them out by definition).

MFU = achieved model FLOP/s / dense peak FLOP/s of the devices used. GPU peaks are the vendors' dense
datasheet figures (NVIDIA and AMD quote "with sparsity" numbers at twice these); on a CPU no datasheet figure
applies, so the peak is a matmul measured on this device in this dtype (`measure_matmul_peak`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanoseek.config import ModelConfig
from nanoseek.errors import ConfigError

# ---- FLOPs per token ----------------------------------------------------------------------------------------

# Printed names of the parts `forward_flops` returns, in order. MTP parts are one module's worth x D.
PART_LABELS: dict[str, str] = {
    "q_proj": "MLA query projections",
    "kv_a_proj": "MLA kv_a_proj (latent + rope key)",
    "kv_b_proj": "MLA kv_b_proj (per-head keys, values)",
    "o_proj": "MLA o_proj",
    "attention": "attention scores + values",
    "dense_ffn": "dense FFN layers",
    "routed_experts": "MoE routed experts (top-k)",
    "shared_experts": "MoE shared experts",
    "router": "MoE router",
    "norms": "norm scales (and biases)",
    "head": "output head",
    "mtp.eh_proj": "MTP eh_proj",
    "mtp.layer": "MTP decoder layer (projections + MoE)",
    "mtp.attention": "MTP attention scores + values",
    "mtp.head": "MTP output head (shared weights, run again)",
}
# Parts that are weight matmuls of the main model (the "weights" of FlopCounts; 2 x active non-embedding params).
WEIGHT_PARTS = ("q_proj", "kv_a_proj", "kv_b_proj", "o_proj", "dense_ffn", "routed_experts", "shared_experts",
                "router", "norms")


def part_label(config: ModelConfig, part: str, seq_len: int) -> str:
    """PART_LABELS[part] with what this config makes of it (no q-lora, how many dense layers, top-k of n)."""
    label = PART_LABELS[part]
    if part == "q_proj":
        return label + (" (q_a + q_b)" if config.q_lora_rank else " (q_proj, no q-lora)")
    if part == "attention":
        return label + f" (causal, T={seq_len:,})"
    if part == "dense_ffn":
        n = min(config.first_k_dense_replace, config.num_hidden_layers)
        return label + f" ({n} layer{'s' * (n != 1)})"
    if part == "routed_experts":
        return f"MoE routed experts (top-{config.num_experts_per_tok} of {config.n_routed_experts})"
    return label


def attention_forward_flops(config: ModelConfig, seq_len: int, causal: bool = True) -> int:
    """One MLA layer's attention core (scores + value sum), forward, per token, averaged over a sequence."""
    width = config.num_attention_heads * (config.qk_head_dim + config.v_head_dim)
    # causal: 2 x width x (1 + 2 + ... + T) / T = width x (T + 1); otherwise 2 x width x T
    return width * (seq_len + 1) if causal else 2 * width * seq_len


def attention_flops_per_token(config: ModelConfig, seq_len: int, causal: bool = True) -> int:
    """One MLA layer's attention core, forward + backward, per token."""
    return 3 * attention_forward_flops(config, seq_len, causal)


def _layer_flops(c: ModelConfig, seq_len: int, causal: bool, moe: bool) -> dict[str, int]:
    """Forward FLOPs per token of one decoder layer (MLA + FFN), by part."""
    d, H = c.hidden_size, c.num_attention_heads
    q = d * c.q_lora_rank + c.q_lora_rank * H * c.qk_head_dim if c.q_lora_rank else d * H * c.qk_head_dim
    norm_w = 2 * d + c.kv_lora_rank + (c.q_lora_rank or 0)  # input/post-attention norms, q_a/kv_a latent norms
    if c.attention_bias:  # q_a_proj, kv_a_proj_with_mqa and o_proj carry biases then (q_proj never does)
        norm_w += (c.q_lora_rank or 0) + c.kv_lora_rank + c.qk_rope_head_dim + d
    parts = dict(
        q_proj=2 * q,
        kv_a_proj=2 * d * (c.kv_lora_rank + c.qk_rope_head_dim),
        kv_b_proj=2 * c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim),
        o_proj=2 * H * c.v_head_dim * d,
        attention=attention_forward_flops(c, seq_len, causal),
        dense_ffn=0, routed_experts=0, shared_experts=0, router=0,
        norms=2 * norm_w,
    )
    swiglu = 2 * 3 * d  # gate, up, down: 3 d x width weights
    if moe:
        parts.update(routed_experts=c.num_experts_per_tok * swiglu * c.moe_intermediate_size,
                     shared_experts=c.n_shared_experts * swiglu * c.moe_intermediate_size,
                     router=2 * d * c.n_routed_experts)
    else:
        parts["dense_ffn"] = swiglu * c.intermediate_size
    return parts


def forward_flops(config: ModelConfig, seq_len: int, *, causal: bool = True, mtp: bool = True) -> dict[str, int]:
    """Forward FLOPs per token by part (keys of PART_LABELS, in that order); training costs 3 x their sum."""
    c = config
    out = dict.fromkeys(PART_LABELS, 0)
    for i in range(c.num_hidden_layers):
        for k, v in _layer_flops(c, seq_len, causal, c.is_moe_layer(i)).items():
            out[k] += v
    out["norms"] += 2 * c.hidden_size  # final norm
    out["head"] = 2 * c.hidden_size * c.vocab_size
    D = c.num_nextn_predict_layers if mtp else 0
    if D:
        layer = _layer_flops(c, seq_len, causal, moe=True)
        attn = layer.pop("attention")
        out["mtp.eh_proj"] = D * 2 * (2 * c.hidden_size) * c.hidden_size
        out["mtp.layer"] = D * (sum(layer.values()) + 2 * 3 * c.hidden_size)  # + enorm, hnorm, shared_head.norm
        out["mtp.attention"] = D * attn
        out["mtp.head"] = D * out["head"]
    return out


@dataclass(frozen=True)
class FlopCounts:
    """Training FLOPs per token (forward + backward = 3 x forward), split by where they go."""
    weights: int  # weight matmuls (and norm scales) of the main model: 6 x active non-embedding parameters
    head: int  # 6 x d x V
    attention: int  # attention core of the main layers
    mtp: int  # all MTP depths together (weights, attention, head)

    @property
    def total(self) -> int:
        return self.weights + self.head + self.attention + self.mtp


def flops_per_token(config: ModelConfig, seq_len: int, *, causal: bool = True, mtp: bool = True) -> FlopCounts:
    """Training FLOPs per token (causal=False: attention over all T keys, the older logs' convention)."""
    f = forward_flops(config, seq_len, causal=causal, mtp=mtp)
    return FlopCounts(weights=3 * sum(f[k] for k in WEIGHT_PARTS), head=3 * f["head"], attention=3 * f["attention"],
                      mtp=3 * sum(v for k, v in f.items() if k.startswith("mtp.")))


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the peak FLOP/s (of all devices used)."""
    return tokens_per_s * flops_per_token / peak if peak > 0 else 0.0


def gpu_hours(flops: float, mfu: float, peak: float) -> float:
    """Device-hours to compute `flops` at this MFU of a `peak` FLOP/s device."""
    return flops / (mfu * peak) / 3600


def implied_mfu(flops: float, hours: float, peak: float) -> float:
    """The MFU at which `flops` take `hours` device-hours on a `peak` FLOP/s device (inverse of gpu_hours)."""
    return flops / (hours * 3600 * peak)


# ---- hardware -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """One accelerator: dense peak FLOP/s (no 2:4 sparsity) by precision, and a default rental price."""
    name: str
    bf16: float  # dense BF16/FP16 tensor-core peak, FLOP/s
    fp8: float | None  # dense FP8 peak; None where there are no FP8 tensor cores
    price: float  # default $ per device-hour
    fp32: float | None = None  # plain FP32 (no TF32), for fp32 training MFU
    match: tuple[str, ...] = ()  # substrings of torch.cuda.get_device_name that identify it

    def peak(self, precision: str) -> float | None:
        return {"bf16": self.bf16, "fp8": self.fp8, "fp32": self.fp32}[precision]

    def dense_peak(self, precision: str) -> float:
        """The peak, or a ConfigError (param "precision") when the table has none for this precision."""
        peak = self.peak(precision)
        if not peak:
            raise ConfigError(f"{self.name} has no {precision} peak in the table; use bf16, or give it in a hardware "
                              "file", param="precision")
        return peak


def lookup_hardware(table: dict[str, "Hardware"], name: str) -> tuple[str, "Hardware"]:
    """(key, entry) of a hardware name, any case; a ConfigError (param "gpu") naming the choices otherwise."""
    key = name.lower()
    if key not in table:
        raise ConfigError(f"unknown hardware {name!r}; choose one of {', '.join(table)}, or add it with a hardware "
                          "file", param="gpu")
    return key, table[key]


PRECISIONS = ("bf16", "fp8")
# The MFU a well-tuned large run reaches on the BF16 peak: the Llama 3 paper (table 4) reports 38-43% on
# 8K-16K H100s, and DeepSeek-V3's own figures imply ~41% (README, "What does it cost?").
TYPICAL_MFU = 0.40

# Vendor datasheets, dense figures. H800 = H100 SXM compute (only NVLink and FP64 are cut); H200 = H100 SXM
# compute with more memory. Prices: rough 2025 on-demand rates at GPU clouds (not hyperscaler list prices),
# except H800 at $2, the figure the DeepSeek-V3 report (table 1) costs its GPU-hours at. Edit here, or
# override per run with --price or --hardware-file.
HARDWARE: dict[str, Hardware] = {
    "h800": Hardware("NVIDIA H800 SXM", 989e12, 1979e12, 2.00, 67e12, ("H800",)),
    "h100": Hardware("NVIDIA H100 SXM", 989e12, 1979e12, 2.50, 67e12, ("H100",)),
    "h100-pcie": Hardware("NVIDIA H100 PCIe", 756e12, 1513e12, 2.00, 51e12, ("H100 PCIe",)),
    "h200": Hardware("NVIDIA H200 SXM", 989e12, 1979e12, 3.50, 67e12, ("H200",)),
    "a100": Hardware("NVIDIA A100 (SXM/PCIe)", 312e12, None, 1.50, 19.5e12, ("A100",)),
    "b200": Hardware("NVIDIA B200", 2250e12, 4500e12, 5.00, None, ("B200",)),
    "mi300x": Hardware("AMD Instinct MI300X", 1307e12, 2615e12, 2.50, 163e12, ("MI300X",)),
}
CPU_PRICE = 0.10  # $/hour: a small cloud VM's few cores


def cpu_hardware(bf16_peak: float, source: str, price: float = CPU_PRICE) -> Hardware:
    """This machine's CPU as a table row: its peak is measured, not looked up (no FP8 matmuls)."""
    return Hardware(f"this CPU ({source})", bf16_peak, None, price)


def apply_overrides(table: dict[str, Hardware], overrides: Any, source: str) -> dict[str, Hardware]:
    """Table entries changed or added by a user's JSON object {key: {name, bf16, fp8, fp32, price}}:
    known keys take the fields given, new keys need at least bf16 and price."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: expected a JSON object of hardware entries, e.g. "
                          '{"h800": {"price": 1.8}, "my-gpu": {"bf16": 5e14, "fp8": 1e15, "price": 3}}')
    fields = {"name", "bf16", "fp8", "fp32", "price"}
    table = dict(table)
    for key, entry in overrides.items():
        key = str(key).lower()
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: entry {key!r} must be an object with fields {', '.join(sorted(fields))}")
        unknown = set(entry) - fields
        if unknown:
            raise ConfigError(f"{source}: entry {key!r} has unknown field(s) {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(sorted(fields))}")
        for f, v in entry.items():
            if f == "name":
                if not isinstance(v, str):
                    raise ConfigError(f"{source}: {key}.name must be a string")
            elif not (v is None and f in ("fp8", "fp32")) and not (
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                    and (v > 0 or f == "price")):
                raise ConfigError(f"{source}: {key}.{f} must be a positive number (FLOP/s for peaks, $/hour for "
                                  f"price), got {v!r}")
        if key in table:
            table[key] = dataclasses.replace(table[key], **entry)
        else:
            missing = {"bf16", "price"} - set(entry)
            if missing:
                raise ConfigError(f"{source}: new entry {key!r} needs {' and '.join(sorted(missing))} "
                                  "(dense bf16 peak FLOP/s, $/hour)")
            table[key] = Hardware(entry.get("name", key), entry["bf16"], entry.get("fp8"), entry["price"],
                                  entry.get("fp32"))
    return table


def with_run_cpu(table: dict[str, Hardware], peak: float, source: str, processes: int = 1) -> dict[str, Hardware]:
    """The table with its "cpu" row set to a run's measured peak (a run on this CPU is that row, at its MFU)."""
    return {**table, "cpu": cpu_hardware(peak / max(processes, 1), f"this run's {source}")}


@dataclass(frozen=True)
class HardwareCost:
    """Device-hours of a number of FLOPs on one hardware row, at each MFU asked (None: no peak, or no MFU)."""
    key: str
    hardware: Hardware
    peak: float | None
    hours: tuple[float | None, ...]
    price: float  # $ per device-hour


def on_other_hardware(flops: float, mfus: tuple[float | None, ...], table: dict[str, Hardware], *,
                      precision: str = "bf16", price: float | None = None) -> list[HardwareCost]:
    """`flops` on every row of `table`, at each MFU of `mfus` (relative to the `precision` dense peak); `price`
    replaces the table's prices."""
    rows = []
    for key, hw in table.items():
        peak = hw.peak(precision)
        hours = tuple(gpu_hours(flops, m, peak) if peak and m else None for m in mfus)
        rows.append(HardwareCost(key, hw, peak, hours, hw.price if price is None else price))
    return rows


def hours_unit(rows: list[HardwareCost]) -> tuple[str, float]:
    """("GPU-hours", 1), or ("GPU-seconds", 3600) when every figure is under an hour (a small run's are)."""
    most = max((h for r in rows for h in r.hours if h is not None), default=0.0)
    return ("GPU-seconds", 3600.0) if most < 1 else ("GPU-hours", 1.0)


def read_hardware_file(table: dict[str, Hardware], path: str | Path, *, keep_cpu: bool = True
                       ) -> dict[str, Hardware]:
    """The table with the entries of a JSON file of overrides (`apply_overrides`); keep_cpu=False drops a "cpu"
    entry (it changes the measured row, which a table without one does not have). ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    if not keep_cpu and isinstance(overrides, dict):
        overrides = {k: v for k, v in overrides.items() if str(k).lower() != "cpu"}
    return apply_overrides(table, overrides, str(path))


def pretraining_context(config: ModelConfig) -> tuple[int, str]:
    """(the context a config was pretrained at, where that comes from): a YaRN config was pretrained at its
    original context and extended later (DeepSeek-V3 section 4.3)."""
    if config.rope_scaling and config.rope_type == "yarn":
        return int(config.rope_scaling["original_max_position_embeddings"]), "the pre-training context before YaRN"
    return config.max_position_embeddings, "max_position_embeddings"


def table_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak for a known GPU name in this dtype, else None. Longest match first ("H100 PCIe"
    before "H100")."""
    precision = {torch.bfloat16: "bf16", torch.float16: "bf16", torch.float32: "fp32"}.get(dtype)
    matches = sorted(((m, hw) for hw in HARDWARE.values() for m in hw.match), key=lambda x: len(x[0]), reverse=True)
    for m, hw in matches:
        if m in device_name:
            return hw.peak(precision) if precision else None
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


# ---- what a run did ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSummary:
    """A training log (`nanoseek.train.log` records) reduced to what it cost, attention counted causal."""
    steps: int  # last logged training step
    tokens: int  # tokens trained (all processes)
    flops_per_token: float  # causal attention (converted for an older log, when the model's config is known)
    peak: float  # peak FLOP/s of all processes together, as logged
    peak_source: str
    world_size: int
    seq_len: int | None
    dtype: str | None
    wall_s: float  # from each start/resume record to the last record after it, summed over resumes
    step_mfu: float  # median of the logged steps' MFU: the rate while stepping
    step_tokens_per_s: float  # median of the logged steps' throughput
    resumes: int
    finished: bool  # an "end" record closes the log
    counted: str = "causal attention"  # how flops_per_token counts attention, as a report says it

    @property
    def flops(self) -> float:
        return self.tokens * self.flops_per_token

    @property
    def wall_mfu(self) -> float:
        """MFU over the whole wall time, evaluation, checkpoints and start-up included."""
        return self.flops / (self.wall_s * self.peak) if self.wall_s > 0 and self.peak > 0 else 0.0


def summarize_run(records: list[dict[str, Any]], config: ModelConfig | None = None) -> RunSummary:
    """Summarize a run's log records. Logs before 2026-12-06 counted attention over all T keys (no
    "attention_flops" in their start record): given the model's config, their FLOPs and MFU are converted to
    the causal count; without it they stay as logged, and `counted` says so. Raises ValueError naming what is
    missing."""
    starts = [i for i, r in enumerate(records) if r.get("event") in ("start", "resume")]
    if not starts:
        raise ValueError("it has no 'start' record (not a nanoseek training log, or cut before its first line)")
    train = [r for r in records if r.get("event") == "train"]
    if not train:
        raise ValueError("it logged no training step yet")
    settings = records[starts[-1]]
    wall = 0.0
    for a, b in zip(starts, starts[1:] + [len(records)]):
        seg = [r["time"] for r in records[a:b] if isinstance(r.get("time"), (int, float))]
        wall += max(seg) - min(seg) if seg else 0.0
    cfg = settings.get("config") or {}

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2 if xs else 0.0

    logged = float(settings.get("flops_per_token", 0.0))
    seq_len = cfg.get("seq_len")
    fpt, counted = logged, "causal attention"
    if settings.get("attention_flops") != "causal":
        if config is not None and seq_len and logged:
            fpt = float(flops_per_token(config, int(seq_len)).total)
            counted = f"causal attention; the log's {logged:.3g} per token counts all T keys"
        else:
            counted = "as logged: attention over all T keys"
    scale = fpt / logged if logged else 1.0
    return RunSummary(
        steps=int(train[-1]["step"]), tokens=int(train[-1].get("tokens", 0)), flops_per_token=fpt,
        peak=float(settings.get("peak_flops", 0.0)), peak_source=str(settings.get("peak_source", "")),
        world_size=int(settings.get("world_size", 1)), seq_len=seq_len, dtype=cfg.get("dtype"), wall_s=wall,
        step_mfu=scale * median([float(r["mfu"]) for r in train if isinstance(r.get("mfu"), (int, float))]),
        step_tokens_per_s=median([float(r["tokens_per_s"]) for r in train
                                  if isinstance(r.get("tokens_per_s"), (int, float))]),
        resumes=len(starts) - 1, finished=records[-1].get("event") == "end", counted=counted,
    )
