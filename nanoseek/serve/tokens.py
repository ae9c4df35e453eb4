"""Token ids as the API shows them: each token's text and raw UTF-8 bytes (logprobs), and the special tokens
a chat answer must not show.

A byte-level BPE token may hold part of a character; decoded alone it reads U+FFFD. Such a token is shown as
"bytes:\\xe4\\xb8" (vLLM's spelling), so distinct tokens keep distinct keys in a top-logprobs map, and
OpenAI's `bytes` field carries each token's raw bytes, from which a client rebuilds the exact text.
"""

from __future__ import annotations

from functools import lru_cache

from nanoseek.engine.reasoning import THINK, THINK_END
from nanoseek.engine.sampling import TokenLogprob
from nanoseek.tokenizer import byte_to_unicode


class TokenTexts:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._bytes_of = _byte_decoder(tokenizer)
        # the chat markers an answer never shows (the reasoning tags are routed to reasoning_content instead)
        specials = getattr(tokenizer, "special_ids", {}) or {}
        self.hidden = tuple(t for t in specials if t not in (THINK, THINK_END))
        self.think_id = getattr(tokenizer, "think_id", None)
        self.think_end_id = getattr(tokenizer, "think_end_id", None)
        self.text = lru_cache(maxsize=65536)(self._text)
        self.bytes = lru_cache(maxsize=65536)(self._bytes)

    def _text(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"<{token_id}>"
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        if "\ufffd" in text:
            raw = bytes(self.bytes(token_id))
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        return text

    def _bytes(self, token_id: int) -> list[int]:
        return list(self._bytes_of(token_id) if self._bytes_of else self.text(token_id).encode("utf-8"))

    def strip_markers(self, text: str) -> str:
        """Drop chat markers (<|end|>, <|user|>, ...) from answer text decoded with its special tokens."""
        if "<|" in text:
            for t in self.hidden:
                text = text.replace(t, "")
        return text

    def starts_thinking(self, prompt_ids: list[int]) -> bool:
        """Whether generation starts inside a reasoning block: the prompt opened <think> and did not close it
        (templates that prefill <think>)."""
        if self.think_id is None:
            return False
        for t in reversed(prompt_ids):
            if t == self.think_end_id:
                return False
            if t == self.think_id:
                return True
        return False

    # ---- logprobs in the two API shapes ---------------------------------------------------------------------
    def chat_logprobs(self, lps: list[TokenLogprob]) -> list[dict]:
        return [{"token": self.text(lp.token_id), "logprob": lp.logprob, "bytes": self.bytes(lp.token_id),
                 "top_logprobs": [{"token": self.text(i), "logprob": v, "bytes": self.bytes(i)} for i, v in lp.top]}
                for lp in lps]

    def completion_logprobs(self, lps: list[TokenLogprob | None], ids: list[int], offset: int = 0) -> dict:
        """The legacy completions shape: tokens, token_logprobs, top_logprobs (token -> logprob, the chosen
        token included, as vLLM does) and text_offset (characters from the start of the choice's text).
        lps[i] is None where a token has no logprob (the first prompt token)."""
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t, lp in zip(ids, lps):
            text = self.text(t)
            out["tokens"].append(text)
            out["text_offset"].append(offset)
            offset += len(text)
            if lp is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            out["token_logprobs"].append(lp.logprob)
            top = {self.text(i): v for i, v in lp.top}
            top.setdefault(text, lp.logprob)
            out["top_logprobs"].append(top)
        return out


def _byte_decoder(tokenizer):
    """token id -> raw bytes for a byte-level BPE tokenizer (GPT-2's alphabet); None if it is not one."""
    if tokenizer is None or not hasattr(tokenizer, "id_to_token"):
        return None
    decode = {c: b for b, c in byte_to_unicode().items()}
    specials = set((getattr(tokenizer, "special_ids", None) or {}).values())

    def of(token_id: int) -> bytes:
        s = tokenizer.id_to_token(token_id) or ""
        if token_id in specials or not all(c in decode for c in s):
            return s.encode("utf-8")
        return bytes(decode[c] for c in s)

    return of
