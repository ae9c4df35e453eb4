"""Reasoning apart from the answer: DeepSeek-R1-style models write their chain of thought between <think> and
</think> before the answer. The chat CLI dims it; the server returns it as `reasoning_content`."""

from __future__ import annotations

THINK, THINK_END = "<think>", "</think>"


class ReasoningSplitter:
    """Routes streamed text to 'reasoning' or 'answer' at the <think> / </think> tags. The tags are special
    tokens, so each arrives whole inside one piece of text; a piece may hold text on both sides of one."""

    def __init__(self, thinking: bool = False):
        self.thinking = thinking

    def feed(self, text: str) -> list[tuple[str, str]]:
        out = []
        while text:
            tag = THINK_END if self.thinking else THINK
            i = text.find(tag)
            if i < 0:
                out.append(("reasoning" if self.thinking else "answer", text))
                break
            if i:
                out.append(("reasoning" if self.thinking else "answer", text[:i]))
            self.thinking = not self.thinking
            text = text[i + len(tag):]
        return out
