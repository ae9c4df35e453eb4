"""What `data prepare`, `data info` and `tokenizer train` refuse or repair, driven through the `nanoseek` command:
corrupt shards (checksums, token ids past the vocabulary), every manifest field checked against its schema,
old manifests, the default validation split on a corpus of small files, non-UTF-8 files, absurd vocabulary
sizes, file permissions and the temporaries a killed writer leaves."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanoseek.cli import main as cli
from nanoseek.data.prepare import DEFAULT_VAL_TOKENS, MAX_VAL_SHARE
from nanoseek.schema import MANIFEST_FIELDS, SHARD_FIELDS, SPLIT
from nanoseek.train.config import TrainConfig

from cli_helpers import cli_error
from train_helpers import REPO, subprocess_env

LATIN1 = "Caf\xe9 cr\xe8me, na\xefve d\xe9j\xe0 vu. ".encode("latin-1")


def _text(n: int, size: int) -> list[str]:
    """n documents of `size` characters cut from nanoseek's own sources (real text, always present)."""
    src = "\n".join(p.read_text() for p in sorted((REPO / "nanoseek").rglob("*.py")))
    return [src[i * size:(i + 1) * size] for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus") / "docs"
    d.mkdir()
    for i, t in enumerate(_text(40, 1500)):
        (d / f"doc{i:02d}.txt").write_text(t)
    return d


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tok"
    assert cli(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "400", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def data(corpus, tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "data"
    assert cli(["data", "prepare", "--input", str(corpus), "--tokenizer", str(tok), "--output", str(out),
                "--val-docs", "3", "--shard-tokens", "2000"]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---- checksums and token ids (issue 8.3) -----------------------------------------------------------------------
def test_manifest_records_a_sha256_per_shard_and_info_verifies_it(data, tmp_path, capsys):
    m = json.loads((data / "manifest.json").read_text())
    assert m["version"] == 2
    shards = [s for split in m["splits"].values() for s in split["shards"]]
    assert len(shards) > 2
    for s in shards:  # what `sha256sum` would print
        assert s["sha256"] == hashlib.sha256((data / s["file"]).read_bytes()).hexdigest()
    capsys.readouterr()
    assert cli(["data", "info", str(data)]) == 0
    assert "shards verified (SHA-256" in capsys.readouterr().out

    # bytes overwritten at the same size, with ids that are still valid: only the checksum can tell
    bad = _copy(data, tmp_path / "swapped")
    shard = bad / m["splits"]["train"]["shards"][1]["file"]
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[5:9] = ids[5:9][::-1].copy() + 1
    ids.tofile(shard)
    cli_error(capsys, ["data", "info", str(bad)], f"shard {shard} is corrupt", "SHA-256", "nanoseek data prepare")


def test_token_ids_past_the_vocabulary_are_refused_before_training(data, tmp_path, capsys, monkeypatch):
    bad = _copy(data, tmp_path / "bad")
    m = json.loads((bad / "manifest.json").read_text())
    shard = bad / m["splits"]["train"]["shards"][0]["file"]
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[17] = 65535  # same size, an id no embedding row has
    ids.tofile(shard)
    cli_error(capsys, ["data", "info", str(bad)], f"shard {shard} is corrupt", "id 65535", "400 ids")
    # pretrain stops with the same message instead of an IndexError from the embedding
    cli_error(capsys, ["pretrain", "--data", str(bad), "--out", str(tmp_path / "run"), "--preset", "tiny", "--steps", "1",
                       "--seq-len", "16", "--batch-size", "2"], "id 65535", "is corrupt")
    assert not (tmp_path / "run" / "checkpoints").exists()
    # a split too big to scan at open is checked window by window as batches read it
    from nanoseek.data import shards

    monkeypatch.setattr(shards, "SCAN_BYTES", 0)
    for sh in m["splits"]["train"]["shards"]:
        np.full(sh["tokens"], 65535, dtype=np.uint16).tofile(bad / sh["file"])
    cli_error(capsys, ["pretrain", "--data", str(bad), "--out", str(tmp_path / "run2"), "--preset", "tiny", "--steps",
                       "1", "--seq-len", "16", "--batch-size", "2"], "has id 65535", "is corrupt")
    assert not (tmp_path / "run2" / "checkpoints").exists()


def test_version_1_manifests_are_read_with_a_note(data, tmp_path, capsys):
    old = _copy(data, tmp_path / "v1")
    m = json.loads((old / "manifest.json").read_text())
    m["version"] = 1
    for split in m["splits"].values():
        for s in split["shards"]:
            del s["sha256"]
    (old / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert cli(["data", "info", str(old)]) == 0
    out = capsys.readouterr().out
    assert "version 1 records no checksums" in out and "re-run `nanoseek data prepare`" in out
    # version 2 without a checksum is a broken manifest, not an old one
    m["version"] = 2
    (old / "manifest.json").write_text(json.dumps(m))
    cli_error(capsys, ["data", "info", str(old)], "field 'splits.train.shards[0].sha256' is missing")


# ---- the manifest's schema (issue 8.10) ----------------------------------------------------------------------
def _mutations(fields: dict, prefix: str = ""):
    """(path of keys, field name as the error names it, wrong value) for every field: a wrong type, and for
    numbers and strings with rules a wrong value."""
    for key, f in fields.items():
        name = f"{prefix}{key}"
        yield [key], name, [1, 2] if f.kind != "list" else "abc"
        if f.kind in ("int", "number"):
            yield [key], name, -1 if (f.min is not None and f.min >= 0) or f.above is not None else "x"
            yield [key], name, 1.5 if f.kind == "int" else float("nan")
        if f.choices or f.pattern:
            yield [key], name, "bogus/../../x"
        if f.required:
            yield [key], name, KeyError  # removed


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def test_every_manifest_field_is_checked_against_its_schema(data, tmp_path, capsys):
    root = _copy(data, tmp_path / "m")
    good = json.loads((data / "manifest.json").read_text())
    cases = list(_mutations(MANIFEST_FIELDS))
    cases += [(["splits", *p], f"splits.{n}", v) for p, n, v in _mutations({"train": SPLIT, "val": SPLIT})]
    cases += [(["splits", "train", *p], f"splits.train.{n}", v) for p, n, v in _mutations(SPLIT.fields)]
    cases += [(["splits", "val", "shards", 0, *p], f"splits.val.shards[0].{n}", v)
              for p, n, v in _mutations(SHARD_FIELDS)]
    checked = set()
    for path, name, value in cases:
        if name in ("format", "version") and value is not KeyError and not isinstance(value, list):
            continue  # checked before the schema, with their own message below
        m = copy.deepcopy(good)
        _set(m, path, value)
        (root / "manifest.json").write_text(json.dumps(m))
        err = cli_error(capsys, ["data", "info", str(root)], "manifest")
        want = name if name not in ("format", "version") else ("token-shard manifest" if name == "format"
                                                                  else "format version")
        assert want in err, (path, value, err)
        checked.add(name)
    assert {"dtype", "vocab_size", "splits", "splits.train.shards", "splits.val.shards[0].file",
            "splits.val.shards[0].sha256", "bos_id", "total_tokens"} <= checked
    # the whole manifest not an object, and sums that do not add up
    (root / "manifest.json").write_text("[1, 2]")
    cli_error(capsys, ["data", "info", str(root)], "not a nanoseek token-shard manifest")
    m = copy.deepcopy(good)
    m["splits"]["train"]["tokens"] += 1
    (root / "manifest.json").write_text(json.dumps(m))
    cli_error(capsys, ["data", "info", str(root)], "field 'splits.train.tokens'", "not the sum over its shards")
    m = copy.deepcopy(good)
    m["vocab_size"] = 70000  # uint16 shards cannot hold those ids
    (root / "manifest.json").write_text(json.dumps(m))
    cli_error(capsys, ["data", "info", str(root)], "field 'dtype'")
    (root / "manifest.json").write_text(json.dumps(good))
    assert cli(["data", "info", str(root)]) == 0


# ---- the default validation split (issue 8.6) ------------------------------------------------------------------
def test_default_validation_split_holds_enough_for_an_evaluation(tok, tmp_path, capsys):
    # the evaluation `pretrain` runs with default flags is what the default split is sized for
    c = TrainConfig()
    assert DEFAULT_VAL_TOKENS == c.eval_batches * c.batch_size * c.seq_len + 1
    # 400 small files: 1% of the documents is ~4 files, ~1,000 tokens, less than one default batch (2,049)
    small = tmp_path / "small"
    small.mkdir()
    for i, t in enumerate(_text(400, 300)):
        (small / f"f{i:03d}.txt").write_text(t)
    capsys.readouterr()
    assert cli(["data", "prepare", "--input", str(small), "--tokenizer", str(tok), "--output",
                str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    val, total = m["splits"]["val"], m["total_tokens"]
    assert val["tokens"] <= MAX_VAL_SHARE * total < DEFAULT_VAL_TOKENS  # capped: at most 10% is held out
    assert val["tokens"] > 2049  # ... but at least one default batch (8 x 256 + 1), so evaluation runs
    assert val["documents"] > 20
    assert "validation split: 1% of the documents by text hash gave" in out and "raised to" in out
    assert m["val_selection"]["min_tokens"] == DEFAULT_VAL_TOKENS and "raised" in m["val_selection"]["note"]
    # an explicit --val-fraction is taken as given (at least one document)
    assert cli(["data", "prepare", "--input", str(small), "--tokenizer", str(tok), "--output", str(tmp_path / "e"),
                "--val-fraction", "0.01"]) == 0
    e = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert e["splits"]["val"]["documents"] < 15 and "min_tokens" not in e["val_selection"]


# ---- non-UTF-8 files (issue 8.7) ---------------------------------------------------------------------------
def test_non_utf8_files_error_skip_or_replace(corpus, tok, tmp_path, capsys):
    docs = _copy(corpus, tmp_path / "docs")
    # ASCII for the first 8 KB, then Latin-1: a folder scan's sniffing cannot tell, the decoder must
    (docs / "latin1.txt").write_bytes(b"x" * 9000 + LATIN1)
    (docs / "image.bin").write_bytes(b"\x89PNG\x00\x00binary")  # binary files in folders are always skipped
    for cmd in (["tokenizer", "train", "--vocab-size", "300"], ["data", "prepare", "--tokenizer", str(tok)]):
        out = str(tmp_path / cmd[0])
        err = cli_error(capsys, [*cmd, "--input", str(docs), "--output", out], "latin1.txt is not UTF-8 text",
                        "--on-bad-file skip", "--on-bad-file replace")
        assert "0xe9 at byte 9003" in err and not Path(out).exists()
        assert cli([*cmd, "--input", str(docs), "--output", out, "--on-bad-file", "skip"]) == 0
        assert "1 file(s) held text that is not UTF-8: left out (--on-bad-file skip)" in capsys.readouterr().out
        assert cli([*cmd, "--input", str(docs), "--output", out, "--on-bad-file", "replace"]) == 0
        assert "decoded with U+FFFD" in capsys.readouterr().out
    m = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert m["bad_utf8_files"] == 1 and m["skipped_files"] == 1 and m["read"]["on_bad_file"] == "replace"
    assert m["total_documents"] == 41  # 40 + the decoded one
    # JSONL lines too (line mode: only the bad line is left out)
    (tmp_path / "x.jsonl").write_bytes(b'{"text": "good"}\n{"text": "' + LATIN1 + b'"}\n{"text": "also good"}\n')
    cli_error(capsys, ["data", "prepare", "--input", str(tmp_path / "x.jsonl"), "--tokenizer", str(tok), "--output",
                       str(tmp_path / "j"), "--val-docs", "1"], "x.jsonl is not UTF-8 text", "line 2")
    assert cli(["data", "prepare", "--input", str(tmp_path / "x.jsonl"), "--tokenizer", str(tok), "--output",
                str(tmp_path / "j"), "--val-docs", "1", "--on-bad-file", "skip"]) == 0
    assert json.loads((tmp_path / "j" / "manifest.json").read_text())["total_documents"] == 2


# ---- vocabulary size (issue 8.11) --------------------------------------------------------------------------
def test_vocab_size_is_bounded_by_memory_and_by_the_corpus(corpus, tmp_path, capsys):
    cli_error(capsys, ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "1000000000", "--output",
                       str(tmp_path / "t")], "--vocab-size 1,000,000,000 is more than nanoseek trains")
    assert not (tmp_path / "t").exists()
    # below the memory cap but past what 60 KB of text can yield: trained for what it can, with a note
    assert cli(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "2000000", "--output",
                str(tmp_path / "t")]) == 0
    err = capsys.readouterr().err
    assert "--vocab-size 2,000,000 is more than this corpus can yield" in err
    assert json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())["chat_template"]


# ---- permissions (issue 8.4) and what a killed writer leaves (8.5) -------------------------------------------
def _modes(root: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_get_the_umask_permissions(corpus, tok, tmp_path, mask):
    old = os.umask(mask)
    try:
        assert cli(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--output",
                    str(tmp_path / "tok")]) == 0
        assert cli(["data", "prepare", "--input", str(corpus), "--tokenizer", str(tok), "--output",
                    str(tmp_path / "data"), "--val-docs", "2"]) == 0
        assert cli(["demo", "--new-tokens", "0", "--save", str(tmp_path / "ckpt")]) == 0
    finally:
        os.umask(old)
    for root in ("tok", "data", "ckpt"):
        assert _modes(tmp_path / root) == {("d", 0o777 & ~mask), ("f", 0o666 & ~mask)}, root


@pytest.mark.slow
def test_stale_temporaries_of_a_killed_prepare_are_removed(corpus, tok, tmp_path):
    out = tmp_path / "data"
    # a writer killed inside atomic_dir (as SIGKILL during `data prepare` leaves it), and one still writing
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal; from nanoseek.io import atomic_dir\n"
        f"with atomic_dir({str(out)!r}) as tmp:\n"
        "    (tmp / 'train').mkdir(); (tmp / 'train' / '000000.bin').write_bytes(b'x' * 100)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")], env=subprocess_env())
    assert killed.returncode == -signal.SIGKILL
    stale = list(tmp_path.glob(".data.*.tmp"))
    assert len(stale) == 1 and (stale[0] / "train" / "000000.bin").exists()
    live = subprocess.Popen([sys.executable, "-c", (
        "import sys; from nanoseek.io import atomic_dir\n"
        f"with atomic_dir({str(out)!r}) as tmp:\n"
        "    print(tmp, flush=True); sys.stdin.read()\n")], env=subprocess_env(), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        busy = Path(live.stdout.readline().strip())
        assert busy.is_dir() and not stale[0].exists()  # the live writer already cleaned the dead one's folder
        stale[0].mkdir()  # put it back, then let `data prepare` clean it
        (stale[0] / "junk").write_text("x")
        assert cli(["data", "prepare", "--input", str(corpus), "--tokenizer", str(tok), "--output", str(out),
                    "--val-docs", "2"]) == 0
        assert not stale[0].exists()
        assert busy.is_dir()  # never a folder another process is writing
    finally:
        live.communicate("", timeout=60)
    assert out.is_dir() and not list(tmp_path.glob(".data.*"))
