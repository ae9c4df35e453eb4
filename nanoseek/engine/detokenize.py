"""Streaming detokenization: text increments that never split a UTF-8 character, and stop strings.

Byte-level BPE tokens are byte strings: one character can span several tokens, and decoding a prefix of them
gives U+FFFD. `TextStream` decodes a short window of recent tokens and releases text only once it no longer
ends in a replacement character (the windowed scheme of HF text-generation-inference), so each step costs
O(1) however long the output is. Stop strings are matched on that text: a match ends the output before the
stop string (which is never emitted, even when it was split across tokens), and any tail that could still
grow into a stop string is held back until it cannot.
"""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...


REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Decoder, stop: list[str] | tuple[str, ...] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.max_stop = max((len(s) for s in self.stop), default=0)
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: decoding from here is stable (a character boundary)
        self.read_offset = 0  # tokens up to here are already part of self.text
        self.text = ""  # all complete text so far
        self.emitted = 0  # characters of self.text already returned
        self.stopped: str | None = None  # the stop string that ended the output

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that is now safe to show (may be empty)."""
        if self.stopped is not None:
            return ""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self.text += full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release()

    def _release(self) -> str:
        if self.stop:
            # a new match can only start where the last max_stop - 1 held-back characters begin
            start = max(self.emitted - self.max_stop + 1, 0)
            hits = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
            if hits:
                cut, s = min(hits)
                self.stopped = s
                out = self.text[self.emitted:cut]
                self.text = self.text[:cut]
                self.emitted = cut
                return out
            hold = self._partial_stop_len()
        else:
            hold = 0
        end = len(self.text) - hold
        out = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return out

    def _partial_stop_len(self) -> int:
        """Length of the longest unreleased tail of the text that is a proper prefix of a stop string."""
        tail = self.text[self.emitted:]
        for n in range(min(len(tail), self.max_stop - 1), 0, -1):
            piece = tail[-n:]
            if any(s.startswith(piece) for s in self.stop):
                return n
        return 0

    def flush(self) -> str:
        """Generation ended (length, stop token): release everything held back, including an unfinished
        character's bytes, which then decode as U+FFFD (the tokens really did end there)."""
        if self.stopped is not None:
            return ""
        if self.read_offset < len(self.ids):
            prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
            full = self._decode(self.ids[self.prefix_offset:])
            self.text += full[len(prefix):]
            self.prefix_offset = self.read_offset = len(self.ids)
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out
