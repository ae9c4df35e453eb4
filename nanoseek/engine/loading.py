"""Opening a checkpoint for generation: which directory, its tokenizer, and the ids that end an answer."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from nanoseek.errors import EngineError, TokenizerError
from nanoseek.tokenizer import SPECIAL_TOKENS, Tokenizer, encode_ids, fingerprint_json


class _RawTokenizer:
    """Any tokenizer.json (e.g. an imported Hugging Face checkpoint's) behind the calls the engine makes."""

    def __init__(self, tok):
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        return encode_ids(self._tok, text)

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
    try:
        raw = HFTokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for any malformed file
        raise TokenizerError(f"{file} is not a readable tokenizer ({e}); copy the tokenizer files the model was "
                             "trained with into its directory") from None
    tok = Tokenizer(raw) if all(raw.token_to_id(t) is not None for t in SPECIAL_TOKENS) else _RawTokenizer(raw)
    why = tokenizer_mismatch(path, tok)
    if why:
        warnings.warn(why, TokenizerMismatch, stacklevel=2)
    return tok


class TokenizerMismatch(UserWarning):
    """A checkpoint whose tokenizer.json does not look like the tokenizer its model was trained with."""


def tokenizer_mismatch(path: str | Path, tok) -> str | None:
    """Why `tok` (path/tokenizer.json) looks like another tokenizer than the one the model in `path` learned, or
    None: tokenizer_config.json records the fingerprint of the tokenizer saved with it (nanoseek writes it), and
    a model nanoseek trained has exactly its tokenizer's vocabulary size."""
    path = Path(path)

    def field(name: str, key: str):
        try:
            doc = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc.get(key) if isinstance(doc, dict) else None

    saved = field("tokenizer_config.json", "nanoseek_fingerprint")
    if isinstance(saved, str):
        try:
            now = fingerprint_json((path / "tokenizer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            now = None
        if now is not None and now != saved:
            return (f"{path / 'tokenizer.json'} is tokenizer {now}, but tokenizer_config.json beside it was written "
                    f"for tokenizer {saved}: the files come from different tokenizers; copy all tokenizer files the "
                    "model was trained with into the checkpoint")
    vocab = field("config.json", "vocab_size")
    if isinstance(tok, Tokenizer) and isinstance(vocab, int) and tok.vocab_size != vocab:
        return (f"{path}: its tokenizer has {tok.vocab_size:,} tokens but the model {vocab:,} (a model nanoseek trains "
                "has exactly its tokenizer's): tokenizer.json is not the one the model was trained with, and its "
                "text will be garbage; copy the right tokenizer files into the checkpoint")
    return None
