"""`nanoseek chat`: the interactive terminal chat.

Streaming answers; reasoning between <think> and </think> is shown dimmed apart from the answer and not fed
back into later turns (DeepSeek-R1's practice: earlier chains of thought are dropped from the context).
Input: one line per message; end a line with a backslash to continue it, or wrap a block in triple quotes.
Ctrl-C stops the answer being written and returns to the prompt; Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, TextIO

from nanoseek.cli.common import UserError, add_device_args
from nanoseek.cli.generate import add_sampling_args, load_engine, sampling_params
from nanoseek.engine.prompts import decode_utf8
from nanoseek.engine import ContextLengthError, EngineError
from nanoseek.engine.conversation import Conversation
from nanoseek.engine.engine import Engine
from nanoseek.engine.sampling import SamplingParams

DIM, RESET = "\x1b[2m", "\x1b[0m"

HELP = """commands:
  /clear              forget the conversation (keeps the system prompt)
  /system [TEXT]      set the system prompt (no TEXT: remove it)
  /temperature [T]    show or set the sampling temperature (0 = greedy)
  /help               this list
  /quit               leave (or Ctrl-D)
input: end a line with \\ to continue on the next line, or put \"\"\" on a line alone to start and end a block.
Ctrl-C stops the current answer."""


class ChatSession:
    """The terminal around a Conversation: /commands, dimmed reasoning, Ctrl-C, a status line per answer."""

    def __init__(self, engine: Engine, params: SamplingParams, *, system: str | None = None,
                 out: TextIO = sys.stdout, color: bool = False):
        self.conversation = Conversation(engine, params, system=system)
        self.engine, self.params = engine, params
        self.out, self.color = out, color

    @property
    def messages(self) -> list[dict]:
        return self.conversation.messages

    # ---- output helpers --------------------------------------------------------------------------------
    def _write(self, text: str, style: str = "") -> None:
        self.out.write(f"{style}{text}{RESET}" if self.color and style else text)
        self.out.flush()

    def note(self, text: str) -> None:
        self._write(f"{text}\n", DIM)

    # ---- commands --------------------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a /command; False means leave."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit"):
            return False
        if name == "clear":
            self.conversation.clear()
            self.note("conversation cleared")
        elif name == "system":
            self.conversation.system = arg or None
            self.note(f"system prompt set: {arg}" if arg else "system prompt removed")
        elif name == "temperature":
            if arg:
                try:
                    t = float(arg)
                    if not (math.isfinite(t) and t >= 0):  # nan would pass `t < 0` and break the next answer
                        raise ValueError
                except ValueError:
                    self.note(f"/temperature needs a number >= 0 (0 = greedy), got {arg!r}")
                    return True
                self.params.temperature = t
            self.note(f"temperature {self.params.temperature:g}")
        elif name == "help":
            self.note(HELP)
        else:
            self.note(f"unknown command /{name}; /help lists the commands")
        return True

    # ---- one turn --------------------------------------------------------------------------------------
    def respond(self, user_text: str) -> str:
        """Stream the assistant's answer to user_text; returns the answer (reasoning excluded)."""
        last_written = ""  # the reasoning's last character, "" once the answer has begun
        stopped = False
        pieces = self.conversation.ask(user_text)
        try:
            for kind, text in pieces:
                if kind == "reasoning":
                    self._write(text, DIM)
                    last_written = text[-1:] or last_written
                    continue
                if last_written:
                    # the answer on a line of its own, labelled where no dimming tells it from the reasoning
                    self._write(("" if last_written == "\n" else "\n") + ("" if self.color else "answer: "))
                    text, last_written = text.lstrip(), ""
                self._write(text)
        except ContextLengthError as e:
            self.note(f"{e}; /clear to start over")
            return ""
        except KeyboardInterrupt:
            stopped = True
            self._write("\n")
            self.note("[stopped]")
        finally:
            pieces.close()  # keeps the answer so far, also when Ctrl-C came while it was being written
        turn = self.conversation.last
        if not stopped:
            self._write("\n")
            rate = self.engine.stats.acceptance_rate
            extra = f", {rate:.0%} of drafts accepted" if rate is not None else ""
            cut = " (max tokens reached)" if turn.finish == "length" else ""
            # the conversation so far is in the engine's prefix cache: only the new turn is computed
            reused = self.engine.stats.cached_tokens
            self.note(f"[{turn.prompt_tokens} prompt tokens ({reused} reused from the cache), {turn.new_tokens} new"
                      f"{cut}, {turn.new_tokens / turn.seconds if turn.seconds else 0:.0f} tok/s{extra}]")
        return self.messages[-1]["content"]

    # ---- the loop --------------------------------------------------------------------------------------
    def run(self, read_line: Callable[[str], str]) -> None:
        """read_line(prompt) returns one input line (raises EOFError at the end, KeyboardInterrupt on Ctrl-C)."""
        while True:
            try:
                text = read_message(read_line)
            except EOFError:
                self._write("\n")
                return
            except KeyboardInterrupt:
                self._write("\n")
                self.note("(Ctrl-D or /quit to leave)")
                continue
            except (UserError, UnicodeDecodeError) as e:  # input that is not UTF-8 text
                self.note(f"[{e}; that message was not sent]")
                continue
            if not text.strip():
                continue
            if text.startswith("/") and "\n" not in text:
                if not self.command(text.strip()):
                    return
                continue
            kept = len(self.messages)
            try:
                self.respond(text)
            except Exception as e:  # an error in one answer never ends the session or loses the conversation
                del self.messages[kept:]
                what = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
                self._write("\n")
                self.note(f"[error during the answer: {what}]\n[the message was not answered; the conversation "
                          "before it is kept: send it again, or /clear to start over]")


def read_message(read_line: Callable[[str], str]) -> str:
    """One user message: a line, lines joined by trailing backslashes, or a \"\"\"-delimited block."""
    first = read_line(">>> ")
    if first.strip() == '"""':
        lines = []
        while (line := read_line("... ")).strip() != '"""':
            lines.append(line)
        return "\n".join(lines)
    lines = [first]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(read_line("... "))
    return "\n".join(lines)


def cmd_chat(args) -> None:
    """Interactive chat with streaming output (see nanoseek.engine.chat for the keys and commands)."""
    params = sampling_params(args, skip_special_tokens=False)  # keep <think> / </think> in the text to split on
    engine = load_engine(args)
    if not hasattr(engine.tokenizer, "render_chat"):
        raise UserError(f"{args.checkpoint} has no nanoseek tokenizer (tokenizer.json with the chat special "
                        "tokens); chat needs its template. Use `nanoseek generate` for plain text completion")
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    session = ChatSession(engine, params, system=args.system, color=color,
                          out=sys.stdout)  # today's stdout, not the one bound when the module was imported
    interactive = sys.stdin.isatty()
    if interactive:
        session.note(f"nanoseek chat with {args.checkpoint} ({args.dtype}); /help for commands, Ctrl-D to leave")

    def read_line(prompt: str) -> str:
        if interactive:  # undecodable bytes arrive as surrogates (or as UnicodeDecodeError): refused in run()
            line = input(prompt)
            return decode_utf8(os.fsencode(line), "that input")
        raw = sys.stdin.buffer.readline() if hasattr(sys.stdin, "buffer") else sys.stdin.readline().encode()
        if not raw:
            raise EOFError
        sys.stdout.write(prompt + raw.decode("utf-8", errors="replace"))  # echo scripted input like a session
        return decode_utf8(raw, "that input").rstrip("\n")

    try:
        session.run(read_line)
    except (EngineError, ContextLengthError) as e:
        raise UserError(f"{e} (use /clear to start over)") from None


def register(sub) -> None:
    p = sub.add_parser("chat", help="interactive chat in the terminal (streaming, reasoning dimmed)",
                       description=cmd_chat.__doc__, epilog="in the chat, " + HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="model directory with a nanoseek tokenizer, or a training run directory (its latest "
                        "checkpoint)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--color", default="auto", choices=["auto", "always", "never"],
                   help="ANSI styling (reasoning dimmed); auto: when stdout is a terminal")
    add_sampling_args(p, temperature=0.7, max_tokens=1024)
    add_device_args(p)
    p.set_defaults(func=cmd_chat)
