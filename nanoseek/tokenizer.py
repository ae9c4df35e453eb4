"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), its special tokens and the chat template.

The files it writes are a Hugging Face tokenizer directory: `PreTrainedTokenizerFast` / `AutoTokenizer` load
`tokenizer.json`, and `tokenizer_config.json` carries a Jinja `chat_template` that renders exactly the ids
`Tokenizer.render_chat` produces, so transformers, vLLM and nanoseek's own engine agree on the prompt format.

Chat format (the engine and the server rely on it):
    <|bos|> then per message  <|system|>{content}<|end|>   <|user|>{content}<|end|>
                              <|assistant|><think>{reasoning}</think>{content}<|end|>   (think block only
    when the message has a "reasoning" key); the generation prompt is <|assistant|>; generation stops at
    <|end|> or <|eos|>.

Ordinary text (documents, message contents) is encoded with special tokens treated as plain text, so a web
page that happens to contain "<|user|>" cannot inject a turn marker. HF's `apply_chat_template` tokenizes the
rendered string and would parse such strings as specials; the two agree whenever contents hold no special
token text, which `render_chat` does not forbid (it is the safe side of the difference).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from nanoseek.errors import TokenizerError
from nanoseek.io import atomic_write_text

FORMAT_VERSION = 1
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
                  "<think>", "</think>"]
ROLES = ("system", "user", "assistant")


# GPT-4's (cl100k) pre-tokenization split, which DeepSeek-V3's tokenizer also follows: contractions, letter
# runs with one leading non-letter, digit groups of at most 3, punctuation runs, newlines, spaces. Splitting
# before BPE keeps merges from crossing word boundaries; the digit cap keeps numbers compositional.
def split_pattern(max_digits: int = 3) -> str:
    """The pre-tokenization regex, with digit groups of at most max_digits. 1 gives every digit its own token:
    a small model then reads and writes numbers digit by digit, which column arithmetic needs (with groups
    it must learn which digits each of a thousand number tokens holds)."""
    return (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,%d}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
            r"""|\s*[\r\n]|\s+(?!\S)|\s+""") % max_digits


SPLIT_PATTERN = split_pattern(3)
MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # every byte must stay encodable
# The BPE trainer reserves memory for the whole vocabulary up front (~70 bytes an entry: --vocab-size 1e9 asked
# for 70 GB and aborted the process). The largest vocabularies in use are ~256K (DeepSeek-V3 129K, Kimi-K2
# 164K); 2M entries cost the trainer ~150 MB.
MAX_VOCAB = 1 << 21


def trainable_vocab(requested: int, *, text_bytes: int | None = None, min_frequency: int = 2) -> int:
    """The vocabulary size worth asking the BPE trainer for.

    Refuses more than MAX_VOCAB, and caps the request at what the corpus can yield: every merge joins a pair
    seen at least min_frequency times and removes that many tokens, so text_bytes of text (an upper bound,
    when it is known before reading) allow at most text_bytes / min_frequency merges.
    """
    if requested > MAX_VOCAB:
        raise TokenizerError(f"--vocab-size {requested:,} is more than nanoseek trains ({MAX_VOCAB:,}; the BPE "
                             "trainer reserves memory for every entry up front, and the largest vocabularies in "
                             "use are ~256K)", param="--vocab-size")
    if text_bytes is not None:
        return min(requested, MIN_VOCAB + text_bytes // max(min_frequency, 1))
    return requested


# The same format as a Jinja template for tokenizer_config.json (HF apply_chat_template, vLLM).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] or '' }}<|end|>"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] or '' }}<|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>"
    "{% if message['reasoning'] is defined and message['reasoning'] is not none %}"
    "<think>{{ message['reasoning'] }}</think>{% endif %}"
    "{{ message['content'] or '' }}<|end|>"
    "{% else %}{{ raise_exception('unsupported chat role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte maps to one printable character (what tokenizer.json stores).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100.. in order. We need the
    inverse to count a token's true UTF-8 bytes, which decoding one token alone (replacement chars) gets wrong.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


LONG_TEXT = 4096  # characters past which encode_ids lets other threads run while it tokenizes


def encode_ids(tok, text: str) -> list[int]:
    """The ids of `text` under an HF tokenizer, without special-token handling. A long text goes through the batch
    call, which releases the GIL while it works (the single-text call holds it: a server's event loop stalled
    for as long as a long prompt took to tokenize) and skips the offsets nobody reads; the ids are the same."""
    if len(text) > LONG_TEXT:
        return tok.encode_batch_fast([text], add_special_tokens=False)[0].ids
    return tok.encode(text, add_special_tokens=False).ids


def fingerprint_json(text: str) -> str:
    """`Tokenizer.fingerprint` of a tokenizer.json's text; works for any HF tokenizer, nanoseek's or not."""
    d = json.loads(text)
    model = d.get("model") or {}
    vocab = model.get("vocab") or {}
    vocab = sorted(vocab.items(), key=lambda kv: kv[1]) if isinstance(vocab, dict) else vocab  # Unigram: a list
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
    canon = {
        "type": model.get("type"), "vocab": vocab, "merges": merges,
        "added": sorted((t["id"], t["content"], bool(t.get("special"))) for t in d.get("added_tokens") or []),
        "normalizer": d.get("normalizer"), "pre_tokenizer": d.get("pre_tokenizer"),
        "byte_fallback": model.get("byte_fallback"),
    }
    blob = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def fingerprint_of(directory: str | os.PathLike) -> str | None:
    """The fingerprint of `directory`/tokenizer.json (a checkpoint's tokenizer, whoever made it); None if absent."""
    file = Path(directory) / "tokenizer.json"
    if not file.is_file():
        return None
    try:
        return fingerprint_json(file.read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise TokenizerError(f"cannot read tokenizer {file}: {e}; copy a valid tokenizer.json into "
                             f"{directory}") from None


class Tokenizer:
    """A nanoseek tokenizer: byte-level BPE with `SPECIAL_TOKENS` at ids 0..8."""

    def __init__(self, tok):
        """Wrap a `tokenizers.Tokenizer` that has all of `SPECIAL_TOKENS` as special added tokens."""
        self._tok = tok  # specials in the input text are parsed (chat templates, HF parity)
        self.path: Path | None = None  # the directory or file it was loaded from, if it was
        missing = [s for s in SPECIAL_TOKENS if tok.token_to_id(s) is None]
        if missing:
            raise TokenizerError(f"not a nanoseek tokenizer: special token(s) {', '.join(missing)} missing; "
                                 "train one with `nanoseek tokenizer train`")
        # A second instance that treats special-token text as plain text: ordinary encoding of documents.
        self._plain = HFTokenizer.from_str(tok.to_str())
        self._plain.encode_special_tokens = True
        ids = {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}
        self.bos_id, self.eos_id, self.pad_id = ids["<|bos|>"], ids["<|eos|>"], ids["<|pad|>"]
        self.system_id, self.user_id, self.assistant_id = ids["<|system|>"], ids["<|user|>"], ids["<|assistant|>"]
        self.end_id, self.think_id, self.think_end_id = ids["<|end|>"], ids["<think>"], ids["</think>"]
        self.special_ids = ids

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2, max_digits: int = 3,
              show_progress: bool = False) -> "Tokenizer":
        """Train byte-level BPE on `texts`; the result may be smaller than `vocab_size` on a small corpus.
        max_digits: the longest run of digits one token may hold (see split_pattern)."""
        if vocab_size < MIN_VOCAB:
            raise TokenizerError(f"--vocab-size {vocab_size} is too small: it needs at least {MIN_VOCAB} "
                                 f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes)", param="--vocab-size")
        vocab_size = trainable_vocab(vocab_size)
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split_pattern(max_digits)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
            special_tokens=SPECIAL_TOKENS,  # first, so they get ids 0..8
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes even if unseen: no <unk>
        )
        seen = [0]

        def counted():
            for t in texts:
                if t:
                    seen[0] += 1
                    yield t

        tok.train_from_iterator(counted(), trainer)
        if seen[0] == 0:
            raise TokenizerError("cannot train a tokenizer on an empty corpus: no non-empty documents were read")
        return cls(tok)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a directory holding tokenizer.json (as `save` writes it), or a tokenizer.json file."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise TokenizerError(f"no tokenizer at {path}: expected a directory with tokenizer.json (or the file "
                                 "itself); create one with `nanoseek tokenizer train`")
        try:
            tok = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"cannot read tokenizer {file}: {e}; re-create it with `nanoseek tokenizer train`")
        out = cls(tok)
        out.path = path  # where it came from, for messages that compare tokenizers
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json, each atomically.

        Other files in `directory` (a model checkpoint) are kept: the tokenizer sits next to the weights.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "tokenizer.json", self._tok.to_str(pretty=True))
        extra = SPECIAL_TOKENS[3:]
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>",
            "additional_special_tokens": extra,
            "add_bos_token": False, "add_eos_token": False,  # the chat template writes <|bos|> itself
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            "chat_template": CHAT_TEMPLATE,
            "nanoseek_tokenizer_version": FORMAT_VERSION,
            "nanoseek_fingerprint": self.fingerprint(),
        }
        atomic_write_text(d / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        smap = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>",
                "additional_special_tokens": extra}
        atomic_write_text(d / "special_tokens_map.json", json.dumps(smap, indent=2) + "\n")
        return d

    def to_json(self) -> str:
        """The tokenizer.json text (what worker processes rebuild the tokenizer from)."""
        return self._tok.to_str()

    @classmethod
    def from_json(cls, text: str) -> "Tokenizer":
        return cls(HFTokenizer.from_str(text))

    # ---- properties -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def token_bytes(self) -> np.ndarray:
        """[vocab_size] int32: UTF-8 byte length of each token, 0 for special tokens.

        Bits per byte = sum(loss_nats) / (ln 2 * sum(token_bytes[targets])): comparable across tokenizers.
        """
        return self._token_bytes.copy()

    @cached_property
    def _token_bytes(self) -> np.ndarray:
        special = set(self._special_set)
        return np.array([0 if i in special else len(b) for i, b in enumerate(self._raw_bytes)], dtype=np.int32)

    @cached_property
    def _special_set(self) -> frozenset[int]:
        return frozenset(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)

    @cached_property
    def _raw_bytes(self) -> list[bytes]:
        """Each id's raw bytes. Byte-level tokens are strings over the 256-char alphabet; anything else (a
        special or added token) is its UTF-8 text."""
        decode = {c: b for b, c in byte_to_unicode().items()}
        out = []
        for i in range(self.vocab_size):
            s = self._tok.id_to_token(i) or ""
            if i in self._special_set or not all(c in decode for c in s):
                out.append(s.encode("utf-8"))
            else:
                out.append(bytes(decode[c] for c in s))
        return out

    def fingerprint(self) -> str:
        """Stable hash of everything that decides ids: vocabulary, merges, added tokens, pre-tokenization.

        Built from a canonical form (not the raw file) so formatting and library-version changes to
        tokenizer.json (merges as "a b" vs ["a","b"]) do not change it; stored in data manifests.
        """
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        return fingerprint_json(self._tok.to_str())

    # ---- encode / decode ------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token text is plain text unless `allow_special`."""
        tok = self._tok if allow_special else self._plain
        ids = encode_ids(tok, text)
        return [self.bos_id, *ids] if add_bos else ids

    def encode_batch(self, texts: list[str], add_bos: bool = False) -> list[list[int]]:
        """Encode many texts at once (threaded inside `tokenizers`)."""
        encs = self._plain.encode_batch_fast(list(texts), add_special_tokens=False)
        if add_bos:
            return [[self.bos_id, *e.ids] for e in encs]
        return [e.ids for e in encs]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat -----------------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """Render OpenAI-style messages to (ids, assistant_mask).

        mask[i] = 1 for tokens the assistant wrote: its <think>reasoning</think>, its content and its closing
        <|end|> (so the model learns to stop); the <|assistant|> marker is the prompt's, mask 0.
        """
        ids, mask = [self.bos_id], [0]

        def add(toks: list[int], m: int) -> None:
            ids.extend(toks)
            mask.extend([m] * len(toks))

        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or "role" not in msg:
                raise TokenizerError(f"chat message {i} must be a dict with 'role' and 'content', got {msg!r:.80}")
            role, content = msg["role"], msg.get("content")
            content = "" if content is None else content
            if not isinstance(content, str):
                raise TokenizerError(f"chat message {i}: 'content' must be a string, got {type(content).__name__}")
            if role in ("system", "user"):
                add([self.system_id if role == "system" else self.user_id], 0)
                add(self.encode(content), 0)
                add([self.end_id], 0)
            elif role == "assistant":
                add([self.assistant_id], 0)
                reasoning = msg.get("reasoning")
                if reasoning is not None:
                    if not isinstance(reasoning, str):
                        raise TokenizerError(f"chat message {i}: 'reasoning' must be a string")
                    add([self.think_id, *self.encode(reasoning), self.think_end_id], 1)
                add([*self.encode(content), self.end_id], 1)
            else:
                raise TokenizerError(f"chat message {i}: unsupported role {role!r}; use one of {', '.join(ROLES)}")
        if add_generation_prompt:
            add([self.assistant_id], 0)
        return ids, mask

    @property
    def stop_ids(self) -> tuple[int, int]:
        """Token ids that end generation: <|end|> (end of the assistant's turn) and <|eos|>."""
        return (self.end_id, self.eos_id)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()})"
