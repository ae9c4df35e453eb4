"""A conversation with a model: the messages so far, an optional system prompt, and each new answer streamed
as reasoning and answer pieces. What `nanoseek chat` shows in the terminal; usable as it is from Python:

    chat = Conversation(Engine.load("run/rl"), SamplingParams(temperature=0.7, max_new_tokens=1024))
    for kind, text in chat.ask("What is 47 + 385?"):    # kind: "reasoning" or "answer"
        print(text, end="")
    chat.last.new_tokens, chat.messages

Earlier reasoning is not sent back in later turns (DeepSeek-R1's practice: a chain of thought is dropped from the
context once answered). The conversation so far stays in the engine's prefix cache, so a new turn computes only
its own tokens.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator

from nanoseek.engine.reasoning import ReasoningSplitter
from nanoseek.engine.sampling import SamplingParams
from nanoseek.errors import ContextLengthError


@dataclass
class Turn:
    """What one answer cost: tokens in and out, how it ended, the seconds it took."""
    prompt_tokens: int
    new_tokens: int = 0
    finish: str | None = None  # "stop", "length", or None when it was stopped before the end
    seconds: float = 0.0


class Conversation:
    def __init__(self, engine, params: SamplingParams, *, system: str | None = None):
        self.engine, self.params, self.system = engine, params, system
        self.messages: list[dict] = []
        self.last: Turn | None = None

    def clear(self) -> None:
        """Forget the messages (the system prompt stays)."""
        self.messages.clear()

    def ask(self, text: str) -> Iterator[tuple[str, str]]:
        """Stream the answer to `text` as ("reasoning" | "answer", text) pieces. A ContextLengthError, before any
        token and with `text` not kept, when the conversation already fills the context. Stopped early (an
        exception in the stream, or the iterator closed), the answer so far is kept as the assistant's turn."""
        self.messages.append({"role": "user", "content": text})
        convo = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        try:
            ids = self.engine.encode_chat(convo)
            if len(ids) >= self.engine.max_len:
                raise ContextLengthError(f"the conversation ({len(ids)} tokens) fills the context of "
                                         f"{self.engine.max_len} tokens")
        except ContextLengthError:
            self.messages.pop()
            raise
        room = self.engine.max_len - len(ids)
        params = dataclasses.replace(self.params, max_new_tokens=min(self.params.max_new_tokens, room))
        splitter, answer = ReasoningSplitter(), []
        self.last = turn = Turn(prompt_tokens=len(ids))
        t0 = time.perf_counter()
        stream = self.engine.stream(ids, params)
        try:
            for delta in stream:
                turn.new_tokens += len(delta.token_ids)
                for kind, piece in splitter.feed(delta.text):
                    if kind == "answer":
                        answer.append(piece)
                    yield kind, piece
                turn.finish = delta.finish_reason
        finally:
            stream.close()
            turn.seconds = time.perf_counter() - t0
            self.messages.append({"role": "assistant", "content": "".join(answer).strip()})
