"""Chat datasets for supervised fine-tuning: OpenAI-style `messages` JSONL -> token ids with assistant-only
targets -> rows packed for training.

One conversation per line:
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "What is 47 + 385?"},
                  {"role": "assistant", "reasoning": "7+5=12, write 2, carry 1 ...", "content": "432"}]}
`reasoning_content` (OpenAI-compatible servers, DeepSeek's API) is read as `reasoning`; a content given as a
list of {"type": "text", "text": ...} parts is joined; an assistant message with "weight": 0 (OpenAI's
fine-tuning format) is context only, not trained on.

Targets. `Tokenizer.render_chat` marks the tokens the assistant wrote (its <think>reasoning</think>, its
content and the closing <|end|>). A conversation of ids t_0..t_n becomes inputs t_0..t_{n-1} and targets
t_1..t_n, where target i is kept only when token i+1 is the assistant's (IGNORE_INDEX = -100 elsewhere): the
model learns to write the assistant's turns, never to predict the user's.

Packing. Conversations of a few hundred tokens would leave most of a fixed-length row as padding, so a row
holds several, placed best-fit (each conversation goes into the fullest row that still has room), and
`attention_mask` gives a block-diagonal causal mask: a token attends only to earlier tokens of its own
conversation. With it a packed row computes exactly what each conversation would alone: attention stays
inside the conversation, RoPE scores depend only on relative positions (so a conversation's offset in the
row changes nothing), and the MoE routes each token on its own. Multi-token prediction reads targets up to
D positions ahead (depth k at position i predicts target i+k), so the first k targets of a conversation
would be depth-k targets of the conversation before it. Those are prompt tokens (never trained) except when
a conversation opens with an assistant turn and D > 1 (its second target is the assistant's); such a
conversation always starts a row, where nothing precedes it (with DeepSeek-V3's D = 1 this never happens).
What packing does change: the sequence-wise balance loss and the router's token counts see a row, not a
conversation (a regularizer and a load statistic). Without the mask (nanochat packs without one) a
conversation would attend to the unrelated ones before it in its row, which it never does at inference.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from nanoseek.errors import DataError, TokenizerError

IGNORE_INDEX = -100  # the model's (nanoseek.model.IGNORE_INDEX); data does not import the model
ROLES = ("system", "user", "assistant")
FORMAT_HINT = ('{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "...", '
               '"reasoning": "..."}]}')


# ---- reading ---------------------------------------------------------------------------------------------
def normalize_messages(obj: Any, where: str) -> list[dict[str, Any]]:
    """The messages of one JSONL record, checked and in render_chat's shape ({"role", "content", optional
    "reasoning", optional "weight"}). DataError names `where` (file:line) and the fix."""
    if isinstance(obj, list):
        messages = obj
    elif isinstance(obj, dict) and "messages" in obj:
        messages = obj["messages"]
    else:
        got = f"an object with keys {', '.join(map(repr, list(obj)[:6]))}" if isinstance(obj, dict) \
            else type(obj).__name__
        raise DataError(f'{where}: expected an object with a "messages" list, like {FORMAT_HINT}; got {got}')
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    out = []
    for i, msg in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(msg, dict):
            raise DataError(f'{at} must be an object with "role" and "content", got {type(msg).__name__}')
        role = msg.get("role")
        if role not in ROLES:
            hint = " (tool calls are not supported: drop those turns or fold them into the text)" \
                if role in ("tool", "function", "ipython") else ""
            raise DataError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}{hint}")
        m: dict[str, Any] = {"role": role, "content": _text(msg.get("content"), f"{at}.content")}
        reasoning = msg.get("reasoning")
        alias = msg.get("reasoning_content")
        if reasoning is not None and alias is not None and reasoning != alias:
            raise DataError(f'{at} has both "reasoning" and "reasoning_content" and they differ; keep one')
        reasoning = reasoning if reasoning is not None else alias
        if reasoning is not None:
            if role != "assistant":
                raise DataError(f'{at}: only assistant messages carry reasoning; this one is a {role} message')
            m["reasoning"] = _text(reasoning, f"{at}.reasoning")
        if "weight" in msg:
            w = msg["weight"]
            if role != "assistant" or isinstance(w, bool) or w not in (0, 1):
                raise DataError(f'{at}: "weight" is 0 or 1 (0: do not train on this assistant message), and only '
                                f"assistant messages have one; got {w!r} on a {role} message")
            m["weight"] = int(w)
        out.append(m)
    return out


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and
                                       isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise DataError(f'{where} must be a string (or a list of {{"type": "text", "text": ...}} parts), got '
                    f"{json.dumps(value)[:80] if _jsonable(value) else type(value).__name__}")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def render(tokenizer, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(ids, mask) of a normalized conversation: render_chat's, with "weight": 0 assistant messages unmasked.

    render_chat renders each message after the ones before it without looking back, so the ids of messages[:i]
    are a prefix of the whole and message i occupies [len(prefix i), len(prefix i+1))."""
    ids, mask = tokenizer.render_chat(messages)
    if any(m.get("weight") == 0 for m in messages):
        mask = list(mask)
        for i, m in enumerate(messages):
            if m.get("weight") == 0:
                start = len(tokenizer.render_chat(messages[:i])[0])
                end = len(tokenizer.render_chat(messages[:i + 1])[0])
                mask[start:end] = [0] * (end - start)
    return ids, mask


def inputs_and_targets(ids: Sequence[int], mask: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """x = ids[:-1]; y[i] = ids[i+1] where the assistant wrote token i+1 (mask[i+1] = 1), else IGNORE_INDEX."""
    ids_a = np.asarray(ids, dtype=np.int64)
    keep = np.asarray(mask, dtype=bool)[1:]
    return ids_a[:-1].copy(), np.where(keep, ids_a[1:], IGNORE_INDEX)


@dataclass
class ChatData:
    """Conversations as (inputs, targets) pairs, ready to pack, with what reading them found."""

    x: list[np.ndarray]
    y: list[np.ndarray]
    where: list[str]  # file:line of each
    keys: list[str]  # a hash of each conversation's messages (decides the validation split)
    truncated: int = 0  # conversations longer than the row, cut to fit
    dropped: list[str] = field(default_factory=list)  # file:line of conversations with nothing to train on

    def __len__(self) -> int:
        return len(self.x)

    @property
    def tokens(self) -> int:
        return sum(len(a) for a in self.x)

    @property
    def target_tokens(self) -> int:
        return sum(int((a != IGNORE_INDEX).sum()) for a in self.y)

    def subset(self, idx: Iterable[int]) -> "ChatData":
        idx = list(idx)
        return ChatData([self.x[i] for i in idx], [self.y[i] for i in idx], [self.where[i] for i in idx],
                        [self.keys[i] for i in idx])


def read_chat(path: str | os.PathLike, tokenizer, max_len: int) -> ChatData:
    """Every conversation of a chat JSONL file, rendered with `tokenizer` and cut to at most `max_len` input
    positions (a training row). Conversations with no assistant token left to learn are dropped (and listed);
    bad lines raise DataError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give a JSONL file with one conversation per line, like "
                        f"{FORMAT_HINT} (`nanoseek tasks generate --format sft` writes one)")
    data = ChatData([], [], [], [])
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x}); convert the file to UTF-8, "
                                "e.g. with `iconv -f latin1 -t utf-8`") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); write one conversation "
                                f"per line, like {FORMAT_HINT}") from None
            messages = normalize_messages(obj, where)
            if not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
                raise DataError(f"{where}: no assistant message to train on (SFT learns the assistant's turns); "
                                "add one or drop the line")
            try:
                ids, mask = render(tokenizer, messages)
            except TokenizerError as e:
                raise DataError(f"{where}: {e}") from None
            x, y = inputs_and_targets(ids, mask)
            if len(x) > max_len:
                x, y = x[:max_len], y[:max_len]
                data.truncated += 1
            if not (y != IGNORE_INDEX).any():
                data.dropped.append(where)
                continue
            data.x.append(x)
            data.y.append(y)
            data.where.append(where)
            canon = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            data.keys.append(hashlib.blake2b(canon.encode("utf-8"), digest_size=8).hexdigest())
    if not len(data):
        why = (f"; all {len(data.dropped)} had their assistant turns past the first {max_len} tokens (raise "
               "--seq-len)") if data.dropped else ""
        raise DataError(f"{path}: no conversation to train on{why}; expected lines like {FORMAT_HINT}")
    return data


def split_validation(keys: Sequence[str], fraction: float) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): a conversation is held out when the hash of its messages falls
    below `fraction`, so the split does not depend on the file's order or the seed, and identical
    conversations land on the same side. At least one is held out when fraction > 0 and there are two."""
    if fraction <= 0:
        return list(range(len(keys))), []
    u = [int(k, 16) / 16 ** len(k) for k in keys]
    val = [i for i, v in enumerate(u) if v < fraction]
    if not val and len(keys) >= 2:
        val = [min(range(len(keys)), key=u.__getitem__)]
    if len(val) == len(keys):
        val = val[:-1]
    held = set(val)
    return [i for i in range(len(keys)) if i not in held], val


def file_digest(*paths: str | os.PathLike | None) -> str:
    """A short hash of the files' bytes: which data a saved position refers to."""
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            h.update(b"\0none")
            continue
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0eof")
    return h.hexdigest()[:16]


# ---- packing ---------------------------------------------------------------------------------------------
def leading_masked(y: np.ndarray) -> int:
    """Targets at the start of a conversation that are not trained (its prompt)."""
    trained = np.flatnonzero(y != IGNORE_INDEX)
    return int(trained[0]) if len(trained) else len(y)


@dataclass
class Row:
    """One packed row: conversation indices and the position each starts at."""

    convs: list[int]
    offsets: list[int]


def pack(lengths: Sequence[int], capacity: int, order: Iterable[int],
         first_only: Sequence[bool] | None = None) -> list[Row]:
    """Best-fit packing of conversations (in `order`) into rows of `capacity` positions.

    Each conversation goes into the open row with the least room that still fits it, else into a new row;
    one marked `first_only` always starts a new row. Rows too full to take the shortest conversation are
    closed. Deterministic for a given order."""
    rows: list[Row] = []
    used: list[int] = []
    rooms: list[tuple[int, int]] = []  # (room left, row index) of open rows, sorted
    shortest = min(lengths, default=1)
    for c in order:
        need = lengths[c]
        j = len(rooms) if first_only is not None and first_only[c] else bisect.bisect_left(rooms, (need, -1))
        if j < len(rooms):
            room, r = rooms.pop(j)
            rows[r].convs.append(c)
            rows[r].offsets.append(used[r])
            used[r] += need
            room -= need
        else:
            r = len(rows)
            rows.append(Row([c], [0]))
            used.append(need)
            room = capacity - need
        if room >= shortest:
            bisect.insort(rooms, (room, r))
    return rows


class PackedChat:
    """Conversations packed into rows of `seq_len` positions: per-epoch shuffled packings for training, a fixed
    one for validation; each row as tensors (inputs, targets, attention mask) and its target counts."""

    def __init__(self, data: ChatData, seq_len: int, mtp_depth: int, pad_id: int):
        self.data, self.seq_len, self.mtp_depth, self.pad_id = data, seq_len, mtp_depth, pad_id
        self.lengths = [len(a) for a in data.x]
        # a conversation whose first D targets are not all prompt starts a row (see the module docstring)
        self.first_only = [leading_masked(y) < mtp_depth for y in data.y]
        self.n_targets = np.array([int((y != IGNORE_INDEX).sum()) for y in data.y], dtype=np.int64)
        # head[c, k-1]: trained targets among conversation c's first k (a row's first k targets are no MTP
        # depth-k target: depth k at position i predicts target i+k)
        self.head = np.zeros((len(data), max(mtp_depth, 1)), dtype=np.int64)
        for c, y in enumerate(data.y):
            trained = (y[:max(mtp_depth, 1)] != IGNORE_INDEX).astype(np.int64)
            self.head[c, :len(trained)] = np.cumsum(trained)
            self.head[c, len(trained):] = trained.sum()

    def rows(self, order: Iterable[int]) -> list[Row]:
        return pack(self.lengths, self.seq_len, order, self.first_only)

    def epoch_rows(self, seed: int, epoch: int) -> list[Row]:
        """Epoch `epoch`'s rows: conversations shuffled, packed, and the rows shuffled (seeded)."""
        rng = np.random.default_rng([seed, epoch])
        rows = self.rows(rng.permutation(len(self.data)).tolist())
        return [rows[i] for i in rng.permutation(len(rows))]

    def counts(self, row: Row) -> tuple[int, list[int], int]:
        """(targets of the next-token loss, targets of each MTP depth, positions holding conversation tokens)."""
        main = int(self.n_targets[row.convs].sum())
        mtp = [main - int(self.head[row.convs[0], k]) for k in range(self.mtp_depth)]
        return main, mtp, sum(self.lengths[c] for c in row.convs)

    def batch(self, rows: Sequence[Row | None], device: torch.device | None = None) -> "ChatBatch":
        """Tensors for rows (None: a row of padding that trains nothing, for ranks short of validation rows)."""
        T = self.seq_len
        x = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        y = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)
        # segment id per position: the conversation's number in the row; padding gets its own negative id per
        # position, so a pad attends only to itself (no row of the mask is empty)
        seg = np.tile(-1 - np.arange(T, dtype=np.int64), (len(rows), 1))
        main, mtp, real = 0, [0] * self.mtp_depth, 0
        for b, row in enumerate(rows):
            if row is None:
                continue
            for s, (c, off) in enumerate(zip(row.convs, row.offsets)):
                n = self.lengths[c]
                x[b, off:off + n], y[b, off:off + n], seg[b, off:off + n] = self.data.x[c], self.data.y[c], s
            m, depths, r = self.counts(row)
            main, real = main + m, real + r
            mtp = [a + d for a, d in zip(mtp, depths)]
        return ChatBatch(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device),
                         attention_mask(torch.from_numpy(seg)).to(device), main, mtp, real)


def attention_mask(seg: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool (True: may attend): causal within equal segment ids."""
    T = seg.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return ((seg[:, :, None] == seg[:, None, :]) & causal)[:, None]


@dataclass
class ChatBatch:
    x: torch.Tensor  # [B, T] inputs
    y: torch.Tensor  # [B, T] targets, IGNORE_INDEX where not trained
    mask: torch.Tensor  # [B, 1, T, T] bool attention mask
    targets: int  # trained next-token targets
    mtp_targets: list[int]  # trained targets of each MTP depth
    tokens: int  # positions holding conversation tokens (the rest is padding)
