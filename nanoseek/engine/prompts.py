"""Prompt files in, completion records out: the batch generation that `nanoseek generate` runs, for Python too.

A prompt file holds one prompt per line: plain text, or a JSON object {"prompt": text} or {"messages": [...]}
(a chat). Each prompt's completion becomes one JSON record (`completion_record`), versioned, with the prompt's
own fields kept so that a reader can join it back.
"""

from __future__ import annotations

import json
from typing import Iterator

from nanoseek.engine.engine import Engine, RunStats
from nanoseek.engine.request import Completion
from nanoseek.engine.sampling import SamplingParams, TokenLogprob
from nanoseek.errors import DataError

FORMAT_VERSION = 1  # of the completion records


def decode_utf8(data: bytes, name: str) -> str:
    """Text input as UTF-8, or a DataError naming the source, line and byte (never a traceback later on)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{name} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); convert it, e.g. "
                        "with `iconv -f latin1 -t utf-8`") from None


def parse_prompts(text: str, name: str) -> list[dict]:
    """Each non-empty line as {"prompt": text} or {"messages": [...]}; name: the source, for error messages."""
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            items.append({"prompt": line})
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name} line {n}: not valid JSON ({e.msg}); write one object per line like "
                            '{"prompt": "..."} or {"messages": [...]}, or plain text lines') from None
        if not isinstance(obj, dict) or not (isinstance(obj.get("prompt"), str) or
                                             isinstance(obj.get("messages"), list)):
            raise DataError(f'{name} line {n}: expected {{"prompt": "..."}} or {{"messages": [...]}}')
        for i, msg in enumerate(obj.get("messages") or []):
            if not (isinstance(msg, dict) and isinstance(msg.get("role"), str)
                    and isinstance(msg.get("content"), str)):
                raise DataError(f'{name} line {n}: messages[{i}] must be an object with a "role" and a '
                                f'"content" string, like {{"role": "user", "content": "Hi"}}; got {msg!r:.80}')
        items.append(obj)
    return items


def prompt_ids(engine: Engine, item: dict, chat: bool = False, system: str | None = None) -> list[int]:
    """A prompt's token ids: messages through the chat template; plain text as is, or as one user turn (chat)."""
    if "messages" in item:
        return engine.encode_chat(item["messages"])
    if chat:
        msgs = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": item["prompt"]})
        return engine.encode_chat(msgs)
    return engine.tokenizer.encode(item["prompt"])


def logprobs_json(tokenizer, lps: list[TokenLogprob | None] | None) -> list | None:
    if lps is None:
        return None

    def name(i):
        return tokenizer.decode([i]) if tokenizer is not None else None

    return [None if lp is None else {"token_id": lp.token_id, "token": name(lp.token_id), "logprob": lp.logprob,
                                     "top": [{"token_id": i, "token": name(i), "logprob": v} for i, v in lp.top]}
            for lp in lps]


def completion_record(out: Completion, item: dict, index: int, tokenizer, speculative: bool = False) -> dict:
    rec = {"format_version": FORMAT_VERSION, "index": index, **item, "text": out.text,
           "finish_reason": out.finish_reason, "stop_reason": out.stop_reason,
           "prompt_tokens": len(out.prompt_ids), "completion_tokens": len(out.token_ids), "token_ids": out.token_ids}
    if out.logprobs is not None:
        rec["logprobs"] = logprobs_json(tokenizer, out.logprobs)
    if out.prompt_logprobs is not None:
        rec["prompt_logprobs"] = logprobs_json(tokenizer, out.prompt_logprobs)
    if speculative:
        rec["acceptance_rate"] = out.acceptance_rate
    return rec


def generate_batches(engine: Engine, items: list[dict], params: SamplingParams, *, batch_size: int = 32,
                     chat: bool = False, system: str | None = None) -> Iterator[tuple[list[dict], RunStats]]:
    """Generate for each prompt, batch_size at a time, yielding each batch's records (in prompt order) and
    the engine's figures for it as the batch ends."""
    ids = [prompt_ids(engine, it, chat, system) for it in items]
    for start in range(0, len(items), batch_size):
        outs = sorted(engine.generate(ids[start:start + batch_size], params), key=lambda o: o.index)
        yield ([completion_record(o, items[start + o.index], start + o.index, engine.tokenizer,
                                  speculative=engine.speculative > 0) for o in outs], engine.stats)
