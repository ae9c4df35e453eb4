"""`nanoseek demo`, `nanoseek info` and `nanoseek convert`: look at a model, import a checkpoint."""

from __future__ import annotations

import time

import torch

import nanoseek
from nanoseek.cli.common import DTYPES, add_device_args, nonneg_int, positive_int, resolve_device, resolve_dtype
from nanoseek.config import PRESETS, ModelConfig, mla_serving, preset
from nanoseek.engine import Engine, SamplingParams
from nanoseek.hf import convert
from nanoseek.model import count_params


def _build_or_load(args):
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    if getattr(args, "checkpoint", None):
        model = nanoseek.load_model(args.checkpoint, dtype=dtype, device=device)
        source = args.checkpoint
    else:
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = nanoseek.DeepSeekV3(preset(args.preset)).to(dtype).eval()
        source = f"preset {args.preset} (random init, seed {args.seed})"
    return model, source


def cmd_demo(args) -> None:
    """Forward + greedy generation on a tiny model: shows the whole model runs end to end."""
    model, source = _build_or_load(args)
    cfg = model.config
    pc = count_params(cfg)
    print(f"model: {source}")
    print(f"  {pc.total / 1e6:.2f}M params ({pc.active / 1e6:.2f}M active per token), {cfg.num_hidden_layers} layers, "
          f"{cfg.n_routed_experts} routed experts (top-{cfg.num_experts_per_tok}), {len(model.mtp)} MTP module(s)")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens), generator=g).to(device)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.hidden_states(prompt)
        logits = model.lm_head(out.hidden)
        t_fwd = time.perf_counter() - t0
    print(f"forward over {args.prompt_tokens} tokens: logits {tuple(logits.shape)} in {t_fwd * 1e3:.1f} ms")
    print(f"expert load (tokens per expert, first MoE layer): {out.expert_counts[0].tolist()}")
    if args.new_tokens:
        engine = Engine(model)  # the latent-cache engine `nanoseek generate` uses
        t0 = time.perf_counter()
        done = engine.generate(prompt[0].tolist(), SamplingParams(max_new_tokens=args.new_tokens, temperature=0))
        t_gen = time.perf_counter() - t0
        print(f"greedy continuation ({args.new_tokens} tokens, latent KV cache "
              f"{engine.stats.cache_bytes_per_token} B/token, {args.new_tokens / t_gen:.1f} tok/s): {done.token_ids}")
    if args.save:
        path = nanoseek.save_model(model, args.save)
        print(f"wrote Hugging Face checkpoint to {path}")


def cmd_info(args) -> None:
    """Parameter counts and cache size of a preset or checkpoint (built on the meta device: no memory), and
    whether vLLM's MLA kernels serve its latent shape."""
    cfg = ModelConfig.load(args.checkpoint) if args.checkpoint else preset(args.preset)
    pc = count_params(cfg)
    cache = cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    rows = [
        ("total parameters (main model)", f"{pc.total:,}"),
        ("active parameters per token", f"{pc.active:,}"),
        ("embedding parameters", f"{pc.embedding:,}"),
        ("non-embedding parameters", f"{pc.non_embedding:,}"),
        ("MTP module parameters (not shared)", f"{pc.mtp:,}"),
        ("layers / dense layers / MoE layers", f"{cfg.num_hidden_layers} / {cfg.first_k_dense_replace} / {cfg.num_moe_layers}"),
        ("routed experts / active / shared", f"{cfg.n_routed_experts} / {cfg.num_experts_per_tok} / {cfg.n_shared_experts}"),
        ("latent KV cache per token (values)", f"{cache:,} (= {cfg.num_hidden_layers} x ({cfg.kv_lora_rank} + {cfg.qk_rope_head_dim}))"),
        ("served by vLLM's MLA kernels", mla_serving(cfg)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def cmd_convert(args) -> None:
    """Import a Hugging Face DeepseekV3 directory (sharded, fused-expert or FP8) and write the plain layout.
    The source is only read: DEST must be a new or other directory, neither the source nor inside it."""
    path = convert(args.source, args.dest, resolve_dtype(args.dtype), max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(f"wrote {path} ({args.dtype})")


def register(sub) -> None:
    p = sub.add_parser("demo", help="run a tiny model end to end: forward, routing stats, greedy tokens",
                       description=cmd_demo.__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model shape (default tiny)")
    src.add_argument("--checkpoint", help="load this nanoseek / Hugging Face model directory instead")
    p.add_argument("--prompt-tokens", type=positive_int, default=16, help="length of the random prompt")
    p.add_argument("--new-tokens", type=nonneg_int, default=8, help="tokens to generate greedily")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", metavar="DIR", help="also write the model as a Hugging Face checkpoint here")
    add_device_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="parameter counts and KV-cache size of a preset or checkpoint",
                       description=cmd_info.__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    src.add_argument("--checkpoint", help="a model directory with config.json")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="import a Hugging Face DeepSeek-V3 checkpoint (incl. FP8) into the plain layout",
                       description=cmd_convert.__doc__)
    p.add_argument("source", help="Hugging Face model directory")
    p.add_argument("dest", help="output directory")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="shard size of the written safetensors")
    p.set_defaults(func=cmd_convert)
