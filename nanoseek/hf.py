"""Hugging Face checkpoint import and export (the layout: docs/architecture.md §6).

A nanoseek checkpoint *is* a Hugging Face `DeepseekV3ForCausalLM` directory: `config.json` plus safetensors in
the hub's per-expert layout, MTP module k stored as decoder layer `num_hidden_layers + k - 1` with the
duplicate `embed_tokens` / `shared_head.head` copies DeepSeek's own checkpoints carry. Import reads that
layout, transformers v5's fused-expert layout, sharded checkpoints with an index, and FP8 block-quantized
weights (dequantized on load). Only safetensors are read: never pickle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError
from nanoseek.io import atomic_dir, atomic_write_text
from nanoseek.model import DeepSeekV3

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
GENERATION_CONFIG_NAME = "generation_config.json"
_MODEL_FILE = re.compile(r"^(model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|config\.json)$")


# ---- name mapping ----------------------------------------------------------------------------------
def to_hf_state_dict(model: DeepSeekV3) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, tensor) pairs in the hub's per-expert layout."""
    cfg = model.config
    L = cfg.num_hidden_layers
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: HF stores only the embedding
        m = re.match(r"mtp\.(\d+)\.(.*)", name)
        if m:
            name = f"model.layers.{L + int(m.group(1))}.{m.group(2)}"
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix, inter = name[: -len("gate_up_proj")], t.shape[1] // 2
            for j in range(t.shape[0]):
                yield f"{prefix}{j}.gate_proj.weight", t[j, :inter]
                yield f"{prefix}{j}.up_proj.weight", t[j, inter:]
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for j in range(t.shape[0]):
                yield f"{prefix}{j}.down_proj.weight", t[j]
        else:
            yield name, t
    # DeepSeek's MTP layers carry copies of the shared embedding and head (docs/architecture.md §5.3); tools
    # expect them.
    for k in range(cfg.num_nextn_predict_layers):
        yield f"model.layers.{L + k}.embed_tokens.weight", model.model.embed_tokens.weight
        yield f"model.layers.{L + k}.shared_head.head.weight", model.lm_head.weight


def _from_hf_names(cfg: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """HF names -> nanoseek names; stacks per-expert tensors; drops the MTP duplicates of embedding and head."""
    L = cfg.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = defaultdict(lambda: defaultdict(dict))
    for name, t in tensors:
        m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
        if m and int(m.group(1)) >= L:
            rest = m.group(2)
            if rest in ("embed_tokens.weight", "shared_head.head.weight"):
                continue  # copies of the shared tensors
            name = f"mtp.{int(m.group(1)) - L}.{rest}"
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        m = re.match(r"(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", name)
        if m:
            experts[m.group(1)][int(m.group(2))][m.group(3)] = t
            continue
        out[name] = t
    for prefix, by_idx in experts.items():
        n = cfg.n_routed_experts
        missing = [f"{prefix}.{j}.{p}.weight" for j in range(n) for p in ("gate_proj", "up_proj", "down_proj")
                   if p not in by_idx.get(j, {})]
        extra = [f"{prefix}.{j}" for j in by_idx if j >= n]
        if missing or extra:
            raise CheckpointError(_problem_report(missing=_hf_mtp_names(cfg, missing), unexpected=extra))
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat((by_idx[j]["gate_proj"], by_idx[j]["up_proj"])) for j in range(n)])
        out[f"{prefix}.down_proj"] = torch.stack([by_idx[j]["down_proj"] for j in range(n)])
    return out


def _hf_mtp_names(cfg: ModelConfig, names: list[str]) -> list[str]:
    L = cfg.num_hidden_layers
    return [re.sub(r"^mtp\.(\d+)\.", lambda m: f"model.layers.{L + int(m.group(1))}.", n) for n in names]


def _problem_report(missing=(), unexpected=(), mismatched=()) -> str:
    lines = ["checkpoint does not match its config.json:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        items = list(items)
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            lines.append(f"  {title} ({len(items)}): {shown}")
    lines.append("  check that config.json belongs to these weights (layers, experts, ranks, vocab_size).")
    return "\n".join(lines)


# ---- FP8 -------------------------------------------------------------------------------------------
def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128),
                   dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """W = float(W_fp8) * scale_inv, one scale per block (edge blocks partial); scale_inv is a multiplier."""
    rows, cols = weight.shape
    br, bc = block
    s = scale_inv.float().repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]
    return (weight.float() * s).to(dtype)


# ---- export ----------------------------------------------------------------------------------------
def write_model_files(model: DeepSeekV3, directory: str | os.PathLike, dtype: torch.dtype | None = None,
                      max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json and the safetensors weights (sharded with an index past max_shard_bytes) into an
    existing directory. Not atomic on its own: `save_model` and the trainer call it inside `atomic_dir`."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in to_hf_state_dict(model):
        if dtype is not None and t.is_floating_point() and "e_score_correction_bias" not in name:
            t = t.to(dtype)
        # safetensors refuses shared storage: give every tensor its own contiguous copy on the CPU
        tensors[name] = t.detach().to("cpu").contiguous().clone()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_NAME), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(directory / fname), metadata=meta)
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    cfg = model.config.replace(extra={k: v for k, v in model.config.extra.items() if k != "quantization_config"})
    d = cfg.to_hf_dict()
    stored = dtype or next(model.parameters()).dtype
    d["torch_dtype"] = str(stored).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    if not (directory / GENERATION_CONFIG_NAME).exists():  # a hub model's own (sampling defaults) is kept
        write_generation_config(directory, bos_token_id=cfg.bos_token_id, eos_token_ids=cfg.eos_token_ids,
                                pad_token_id=cfg.pad_token_id)


def write_generation_config(directory: str | os.PathLike, *, bos_token_id: int | None,
                            eos_token_ids: Iterable[int], pad_token_id: int | None = None) -> None:
    """generation_config.json: the token ids that end generation. transformers' `generate`, vLLM and SGLang
    stop at these; config.json's single eos_token_id cannot name a chat model's end-of-turn token as well."""
    eos = list(dict.fromkeys(int(i) for i in eos_token_ids))
    d = {"_from_model_config": False, "bos_token_id": bos_token_id,
         "eos_token_id": (eos[0] if len(eos) == 1 else eos) if eos else None, "pad_token_id": pad_token_id}
    atomic_write_text(Path(directory) / GENERATION_CONFIG_NAME,
                      json.dumps({k: v for k, v in d.items() if v is not None}, indent=2) + "\n")


def save_model(model: DeepSeekV3, path: str | os.PathLike, dtype: torch.dtype | None = None,
               max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` as a Hugging Face DeepseekV3 directory, atomically.

    Other files already in `path` (tokenizer, training state) are kept; the model files are replaced as a
    whole or not at all.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory; choose a directory path")
    with atomic_dir(path) as tmp:
        if path.is_dir():
            for entry in path.iterdir():
                if _MODEL_FILE.match(entry.name):
                    continue
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        write_model_files(model, tmp, dtype=dtype, max_shard_bytes=max_shard_bytes)
    return path


# ---- import ----------------------------------------------------------------------------------------
def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e}); re-export the checkpoint") from e
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} lists shard files that are missing: {', '.join(missing)}; "
                                  "download or copy the complete checkpoint")
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        raise CheckpointError(f"{path} holds only pickle weights (.bin/.pt); nanoseek reads safetensors only. "
                              "Convert them first, e.g. with transformers: "
                              "AutoModelForCausalLM.from_pretrained(p).save_pretrained(out)")
    raise CheckpointError(f"no *.safetensors weights in {path}")


def _read_tensors(files: list[Path], cfg: ModelConfig, dtype: torch.dtype | None
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    qc = cfg.extra.get("quantization_config") or {}
    block = tuple(qc.get("weight_block_size", (128, 128)))
    fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)
    for f in files:
        try:
            handle = safe_open(str(f), framework="pt")
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"cannot read {f}: {e}. The file is corrupt or truncated; re-download it") from e
        with handle:
            keys = set(handle.keys())
            for name in keys:
                if name.endswith(".weight_scale_inv"):
                    continue
                try:
                    t = handle.get_tensor(name)
                except Exception as e:
                    raise CheckpointError(f"cannot read tensor {name} from {f}: {e}; the file is corrupt") from e
                if t.dtype in fp8:
                    scale_name = name + "_scale_inv"
                    if scale_name not in keys:
                        raise CheckpointError(f"{name} is FP8 but {scale_name} is missing from {f.name}")
                    t = dequantize_fp8(t, handle.get_tensor(scale_name), block, dtype or torch.bfloat16)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise CheckpointError(f"{f}: tensor {name} holds NaN or inf values: whatever wrote it had "
                                          "diverged; load an earlier checkpoint")
                yield name, t


def load_model(path: str | os.PathLike, dtype: torch.dtype | str | None = None,
               device: torch.device | str | None = None) -> DeepSeekV3:
    """Load a nanoseek checkpoint or a Hugging Face DeepseekV3 directory.

    dtype: None keeps the stored dtype (bf16 for dequantized FP8); the router weight and correction bias
    always stay fp32. Names and shapes are checked against config.json before anything is assigned.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory: pass a nanoseek checkpoint or Hugging Face model folder")
    cfg = ModelConfig.load(path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    files = _weight_files(path)
    sd = _from_hf_names(cfg, _read_tensors(files, cfg, dtype))
    if not cfg.rope_interleave:
        sd = _interleave_rope_rows(cfg, sd)
        cfg.rope_interleave = True
    cfg.extra.pop("quantization_config", None)

    if cfg.num_nextn_predict_layers and not any(k.startswith("mtp.") for k in sd):
        # transformers' save_pretrained and many export tools drop the MTP layers (docs/architecture.md §9.9): load the
        # main model, which is complete, and say what was left out.
        warnings.warn(f"{path}: config.json declares {cfg.num_nextn_predict_layers} MTP module(s) but the weights "
                      "hold none; loading without MTP (speculative decoding and MTP training are unavailable)")
        cfg.num_nextn_predict_layers = 0
    with torch.device("meta"):
        model = DeepSeekV3(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k} (checkpoint {tuple(sd[k].shape)}, config {tuple(expected[k].shape)})"
                  for k in sd if k in expected and sd[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(_problem_report(_hf_mtp_names(cfg, missing), _hf_mtp_names(cfg, unexpected),
                                              _hf_mtp_names(cfg, mismatched)))
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rotary.reset_parameters()
    model.to(device=device)  # the Router's _apply keeps its weight and bias in fp32
    return model.eval()


def _interleave_rope_rows(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`rope_interleave: false` checkpoints store each rope slice half-split ([x_j | x_{j+d/2}] pairs);
    reorder those rows into adjacent pairs (docs/architecture.md §2.5) so one rope kernel serves every checkpoint."""
    dr, H = cfg.qk_rope_head_dim, cfg.num_attention_heads
    perm = torch.arange(dr).view(2, dr // 2).t().reshape(-1)  # new row 2j <- j, 2j+1 <- j + d/2
    out = dict(sd)
    for name, t in sd.items():
        if name.endswith("self_attn.q_b_proj.weight") or name.endswith("self_attn.q_proj.weight"):
            heads = t.view(H, cfg.qk_head_dim, -1)
            nope, rope = heads.split([cfg.qk_nope_head_dim, dr], dim=1)
            out[name] = torch.cat((nope, rope[:, perm]), dim=1).reshape(t.shape)
        elif name.endswith("self_attn.kv_a_proj_with_mqa.weight") or name.endswith("self_attn.kv_a_proj_with_mqa.bias"):
            latent, rope = t.split([cfg.kv_lora_rank, dr], dim=0)
            out[name] = torch.cat((latent, rope[perm]))
    return out


def convert(source: str | os.PathLike, dest: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
            max_shard_bytes: int = 5 << 30) -> Path:
    """Import a Hugging Face DeepseekV3 directory (sharded, fused-expert or FP8) and write it to `dest` in the
    plain layout. The source is only read: a `dest` that is the source (under any name), lies inside it or
    holds it is refused with a CheckpointError before anything is read."""
    src, dst = Path(source).resolve(), Path(dest).resolve()
    if dst == src or (dst.exists() and src.exists() and os.path.samefile(dst, src)):
        raise CheckpointError(f"DEST {dest} is the source directory {source}: convert never writes over its input; "
                              "give a new directory", param="dest")
    if src in dst.parents:
        raise CheckpointError(f"DEST {dest} is inside the source directory {source}: convert never writes into its "
                              "input; give a directory outside it", param="dest")
    if dst in src.parents:
        raise CheckpointError(f"DEST {dest} holds the source directory {source}: converting would replace that "
                              "folder, source included; give a directory outside it", param="dest")
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"DEST {dest} is a file; give a directory", param="dest")
    model = load_model(source, dtype=dtype, device="cpu")
    return save_model(model, dest, max_shard_bytes=max_shard_bytes)


__all__ = ["convert", "load_model", "save_model", "write_model_files", "to_hf_state_dict", "dequantize_fp8", "CheckpointError"]
