"""Opening a checkpoint for generation: which directory, its tokenizer, and the ids that end an answer."""

from __future__ import annotations

import json
from pathlib import Path

from nanoseek.errors import EngineError


class _RawTokenizer:
    """Any tokenizer.json (e.g. an imported Hugging Face checkpoint's) behind the calls the engine makes."""

    def __init__(self, tok):
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def resolve_checkpoint(path: str | Path) -> Path:
    """A model directory as given, or for a training run directory (or its checkpoints/ folder) the checkpoint
    its `checkpoints/latest` pointer names."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for pointer in (path / "checkpoints" / "latest", path / "latest"):
        if pointer.is_file():
            target = pointer.parent / pointer.read_text().strip()
            if (target / "config.json").is_file():
                return target
            raise EngineError(f"{pointer} names {target.name}, which has no config.json; pass a checkpoint "
                              f"directory from {pointer.parent} instead")
    raise EngineError(f"{path}: no config.json there (nor a training run's checkpoints/latest); point to a "
                      "nanoseek or Hugging Face model directory")


def generation_eos_ids(path: str | Path) -> list[int] | None:
    """The stop ids of a checkpoint's generation_config.json (what HF generate and vLLM stop at), or None when
    it has none or names no eos_token_id."""
    file = Path(path) / "generation_config.json"
    if not file.is_file():
        return None
    try:
        eos = json.loads(file.read_text()).get("eos_token_id")
        ids = None if eos is None else [int(eos)] if isinstance(eos, int) else [int(i) for i in eos]
    except (ValueError, TypeError, AttributeError) as e:
        raise EngineError(f"{file} is not a valid generation config ({e}); fix its eos_token_id or delete "
                          "the file (the tokenizer's or config.json's stop ids are used then)") from None
    return ids


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer: a nanoseek Tokenizer (chat template, stop ids) when it has nanoseek's
    special tokens, else the plain tokenizer.json; None when the directory has no tokenizer.json."""
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        return None
    from tokenizers import Tokenizer as HFTokenizer

    from nanoseek.tokenizer import SPECIAL_TOKENS, Tokenizer

    raw = HFTokenizer.from_file(str(file))
    if all(raw.token_to_id(t) is not None for t in SPECIAL_TOKENS):
        return Tokenizer(raw)
    return _RawTokenizer(raw)
