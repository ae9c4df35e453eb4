"""The JSON files nanoseek reads, field by field: each field's type and range in one place.

`config.json` (a model: `CONFIG_FIELDS`, the Hugging Face `DeepseekV3Config` names `ModelConfig` holds) and
`manifest.json` (token shards: `MANIFEST_FIELDS`) are checked against these tables before anything uses a
value, so a hand-edited or corrupt file fails with one message naming the field (`rope_theta`,
`splits.train.shards[2].file`) and what it must be, never with a traceback from deep inside torch or numpy.
Rules that tie several fields together (n_routed_experts divisible by n_group, shard token counts summing to
the split's) stay with the code that owns the file: `ModelConfig.validate`, `nanoseek.data.shards`.

Unknown keys are allowed (hub configs carry fields nanoseek keeps but does not read).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from nanoseek.errors import UserError


@dataclass(frozen=True)
class Field:
    """One JSON value: its kind, and for numbers a range. kind: int | number | str | bool | object | list.

    Numbers are always finite (no NaN or infinity); an int field refuses 1.0 and true. `fields` is the schema
    of an object's keys, `items` that of a list's elements; `also` an alternative (eos_token_id: an id or a
    list of ids).
    """

    kind: str
    min: float | None = None
    max: float | None = None
    above: float | None = None  # exclusive lower bound
    nullable: bool = False
    required: bool = False
    choices: tuple | None = None
    pattern: str | None = None
    fields: dict[str, "Field"] | None = None
    items: "Field | None" = None
    also: "Field | None" = None

    def describe(self) -> str:
        what = {"int": "an integer", "number": "a finite number", "str": "a string", "bool": "true or false",
                "object": "a JSON object", "list": "a list"}[self.kind]
        if self.choices is not None:
            what = "one of " + ", ".join(repr(c) for c in self.choices)
        bounds = [f">= {_num(self.min)}" if self.min is not None else "",
                  f"> {_num(self.above)}" if self.above is not None else "",
                  f"<= {_num(self.max)}" if self.max is not None else ""]
        bounds = [b for b in bounds if b]
        if bounds:
            what += " " + " and ".join(bounds)
        if self.items is not None:
            what += f" (each {self.items.describe()})"
        if self.also is not None:
            what += f", or {self.also.describe()}"
        if self.nullable:
            what += ", or null"
        return what


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _kind_ok(kind: str, v: Any) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, {"str": str, "bool": bool, "object": dict, "list": list}[kind])


def problem(value: Any, f: Field, name: str) -> tuple[str, str] | None:
    """(field name, what is wrong) for the first problem in value (nested fields named a.b[2].c), or None."""
    if value is None:
        return None if f.nullable else (name, f"must be {f.describe()}, got null")
    ok = _kind_ok(f.kind, value)
    if ok and f.kind in ("int", "number"):
        ok = ((f.min is None or value >= f.min) and (f.max is None or value <= f.max)
              and (f.above is None or value > f.above))
    if ok and f.choices is not None:
        ok = value in f.choices
    if ok and f.pattern is not None:
        ok = re.fullmatch(f.pattern, value) is not None
    if not ok:
        if f.also is not None and problem(value, f.also, name) is None:
            return None
        return name, f"must be {f.describe()}, got {_show(value)}"
    if f.fields is not None:
        return problems(value, f.fields, prefix=f"{name}.")
    if f.items is not None:
        for i, item in enumerate(value):
            if (p := problem(item, f.items, f"{name}[{i}]")) is not None:
                return p
    return None


def problems(obj: dict, fields: dict[str, Field], prefix: str = "") -> tuple[str, str] | None:
    """The first problem among the fields of obj (missing required ones included), or None."""
    for key, f in fields.items():
        if key not in obj:
            if f.required:
                return f"{prefix}{key}", "is missing"
            continue
        if (p := problem(obj[key], f, f"{prefix}{key}")) is not None:
            return p
    return None


def check(obj: Any, fields: dict[str, Field], error: Callable[..., UserError], where: str, hint: str = "") -> None:
    """Raise error(message, param=field) for the first field of obj that breaks its schema.

    where: how the message names the file ("run/data/manifest.json") or the source of the values; hint: the
    remedy appended to the message ("; re-run `nanoseek data prepare`").
    """
    if not isinstance(obj, dict):
        got = type(obj).__name__ if obj is not None else "null"
        raise error(f"{where} must be a JSON object {{...}}, got {got}{hint}")
    if (p := problems(obj, fields)) is not None:
        name, msg = p
        raise error(f"{where}: field '{name}' {msg}{hint}", param=name)


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ---- config.json: ModelConfig's fields (Hugging Face DeepseekV3Config names; docs/architecture.md §1.1) -------
def _pos(**kw) -> Field:
    return Field("int", min=1, required=True, **kw)


def _count(**kw) -> Field:
    return Field("int", min=0, required=True, **kw)


TOKEN_ID = Field("int", min=0)

ROPE_SCALING_FIELDS = {
    "rope_type": Field("str", choices=("yarn", "default")),
    "type": Field("str", choices=("yarn", "default")),
    "factor": Field("number", min=1.0),
    "original_max_position_embeddings": Field("int", min=1),
    "beta_fast": Field("number", above=0.0),
    "beta_slow": Field("number", above=0.0),
    "mscale": Field("number", min=0.0),
    "mscale_all_dim": Field("number", min=0.0),
}

CONFIG_FIELDS: dict[str, Field] = {
    "vocab_size": _pos(),
    "hidden_size": _pos(),
    "intermediate_size": _count(),
    "moe_intermediate_size": _count(),
    "num_hidden_layers": _pos(),
    "num_attention_heads": _pos(),
    "num_key_value_heads": Field("int", min=1, nullable=True),  # null: num_attention_heads (MLA has no GQA)
    "n_shared_experts": _count(),
    "n_routed_experts": _count(),
    "routed_scaling_factor": Field("number", above=0.0, required=True),
    "kv_lora_rank": _pos(),
    "q_lora_rank": Field("int", min=1, nullable=True),
    "qk_rope_head_dim": _pos(),
    "v_head_dim": _pos(),
    "qk_nope_head_dim": _pos(),
    "n_group": _pos(),
    "topk_group": _pos(),
    "num_experts_per_tok": _count(),
    "first_k_dense_replace": _count(),
    "norm_topk_prob": Field("bool", required=True),
    "hidden_act": Field("str", required=True),
    "max_position_embeddings": _pos(),
    "initializer_range": Field("number", min=0.0, required=True),
    "rms_norm_eps": Field("number", above=0.0, required=True),
    "bos_token_id": Field("int", min=0, nullable=True),
    "eos_token_id": Field("int", min=0, nullable=True, also=Field("list", items=TOKEN_ID)),
    "pad_token_id": Field("int", min=0, nullable=True),
    "tie_word_embeddings": Field("bool", required=True),
    "rope_theta": Field("number", above=0.0, required=True),
    "rope_scaling": Field("object", nullable=True, fields=ROPE_SCALING_FIELDS),
    "rope_interleave": Field("bool", required=True),
    "attention_bias": Field("bool", required=True),
    "attention_dropout": Field("number", min=0.0, max=1.0, required=True),
    "num_nextn_predict_layers": _count(),
    "scoring_func": Field("str", required=True),
    "topk_method": Field("str", required=True),
    "aux_loss_alpha": Field("number", min=0.0, required=True),
    "seq_aux": Field("bool", required=True),
}

# Other spellings of the same fields in Hugging Face configs (v5 and hub aliases), checked before they are
# folded into the fields above.
CONFIG_ALIAS_FIELDS: dict[str, Field] = {
    "rope_parameters": Field("object", nullable=True, fields={"rope_theta": Field("number", above=0.0),
                                                                  **ROPE_SCALING_FIELDS}),
    "rope_scaling": Field("object", nullable=True, fields=ROPE_SCALING_FIELDS),
    "num_mtp_layers": Field("int", min=0),
    "num_local_experts": Field("int", min=0),
    "n_group": Field("int", min=1, nullable=True),  # null (no groups) reads as 1
    "topk_group": Field("int", min=1, nullable=True),
    "model_type": Field("str", nullable=True),
}


# ---- manifest.json: token shards (nanoseek.data.shards) ------------------------------------------------------
SHARD_FIELDS = {
    # a file inside the data directory: split folder / name, never an absolute path or a way out of it
    "file": Field("str", required=True, pattern=r"[\w-]+/[\w-][\w.-]*"),
    "tokens": _count(),
    "documents": _count(),
    "sha256": Field("str", pattern=r"[0-9a-f]{64}"),  # required from manifest version 2 on (shards.py)
}

SPLIT = Field("object", required=True, fields={
    "shards": Field("list", required=True, items=Field("object", fields=SHARD_FIELDS)),
    "tokens": _count(),
    "documents": _count(),
})

MANIFEST_FIELDS: dict[str, Field] = {
    "format": Field("str", required=True),
    "version": Field("int", required=True),
    "tokenizer_fingerprint": Field("str", required=True),
    "vocab_size": _pos(),
    "bos_id": _count(),
    "dtype": Field("str", required=True, choices=("uint16", "uint32")),
    "splits": Field("object", required=True, fields={"train": SPLIT, "val": SPLIT}),
    "total_tokens": _count(),
    "total_documents": _count(),
    "skipped_files": Field("int", min=0),
}
