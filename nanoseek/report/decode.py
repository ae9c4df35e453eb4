"""How fast the final model decodes, and how often its MTP drafts are kept: a measurement for the report card.

    measure_decode("run/rl/checkpoints/step_0000200", ["What is 47 + 385?"], chat=True)
        -> {"speculative": {"tokens_per_s", "acceptance_rate", ...}, "plain": {...}, "same": 1, ...}

Greedy, one request at a time (what a chat user sees), through the one generation path (nanoseek.engine).
With an MTP module it runs twice on the same weights: as `nanoseek serve` decodes by default (speculative
"auto": one draft token per step where that measures faster; the DeepSeek-V3 report gives 85-90% acceptance
of the second token, docs/architecture.md, MTP) and without speculation, and counts the prompts whose greedy
tokens agree (speculation must not change greedy output).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from nanoseek.engine import Engine, SamplingParams, load_tokenizer
from nanoseek.engine.loading import generation_eos_ids
from nanoseek.errors import DataError
from nanoseek.hf import load_model

DECODE_TOKENS = 48  # new tokens per prompt
DECODE_BUDGET_S = 16.0  # wall-clock budget of both runs together (prompts stop being added past it)


def measure_decode(checkpoint: str | Path, prompts: list[str], *, chat: bool = True, max_new_tokens: int | None = None,
                   budget_s: float | None = None) -> dict[str, Any]:
    """Greedy decode speed of a checkpoint on these prompts, one request at a time (what a chat user sees):
    with MTP speculation "auto" when the model has an MTP module, and without. Returns {"device", "dtype",
    "speculative": {...} (with an MTP module), "plain": {...}, "same": prompts whose tokens agree}; each run
    {"prompts", "tokens", "tokens_per_s", "acceptance_rate"}, the speculative one also "speedup_measured" (what
    the engine measured of always speculating against never, at batch 1; None if it did not try both). The first run stops adding prompts past half
    of `budget_s`; the second decodes the same prompts.
    max_new_tokens and budget_s default to DECODE_TOKENS and DECODE_BUDGET_S."""
    max_new_tokens = DECODE_TOKENS if max_new_tokens is None else max_new_tokens
    budget_s = DECODE_BUDGET_S if budget_s is None else budget_s
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_model(checkpoint, dtype=dtype, device=device)
    tok = load_tokenizer(checkpoint)
    if tok is None:
        raise DataError(f"{checkpoint} has no tokenizer.json; decoding text prompts needs it")
    eos = generation_eos_ids(checkpoint)
    spec = "auto" if len(model.mtp) else 0
    out: dict[str, Any] = {"device": device.type, "dtype": str(dtype).removeprefix("torch."), "max_new_tokens":
                           max_new_tokens}
    tokens: dict[int, list[list[int]]] = {}
    t_start = time.perf_counter()
    for k in ([spec, 0] if spec else [0]):
        eng = Engine(model, tok, speculative=k, eos_token_ids=eos, max_batch=1,
                     max_len=min(model.config.max_position_embeddings, 1024))
        bos = [tok.bos_id] if getattr(tok, "bos_id", None) is not None else []  # plain text starts a document
        ids = [eng.encode_chat([{"role": "user", "content": p}]) if chat else [*bos, *tok.encode(p + "\n")]
               for p in prompts]
        ids = [x[-(eng.max_len - max_new_tokens):] for x in ids]  # a long prompt keeps its end
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, skip_special_tokens=False)
        eng.generate(ids[0], SamplingParams(max_new_tokens=4, temperature=0.0))  # warm-up: first-call costs
        gen = dec = drafted = accepted = 0
        tokens[k] = []
        # the second run decodes the prompts the first one got to, so the two speeds compare like with like
        for x in ids[:len(tokens[spec])] if k == 0 and spec else ids:
            c = eng.generate(x, params)
            st = eng.stats
            gen, dec = gen + st.generated_tokens, dec + st.decode_seconds
            drafted, accepted = drafted + st.drafted, accepted + st.accepted
            tokens[k].append(list(c.token_ids))
            if k and time.perf_counter() - t_start > budget_s / 2:
                break
        out["speculative" if k else "plain"] = {
            "prompts": len(tokens[k]), "tokens": gen, "tokens_per_s": gen / dec if dec else 0.0,
            "acceptance_rate": accepted / drafted if drafted else None, "draft_tokens": eng.speculative}
        if k:
            out["speculative"]["speedup_measured"] = eng.speculation_speedup
    if spec:
        out["same"] = sum(a == b for a, b in zip(tokens[spec], tokens[0]))
        out["compared"] = min(len(tokens[spec]), len(tokens[0]))
    return out

