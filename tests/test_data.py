"""Data pipeline: corpora in every format -> token shards + manifest -> PackedLoader batches; bad input."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanoseek import cli
from nanoseek.data import DataError, PackedLoader, prepare, read_manifest
from nanoseek.data.prepare import doc_hash
from nanoseek.tokenizer import SPECIAL_TOKENS, Tokenizer

from cli_helpers import cli_error

WORDS = ("the of and to in is was for on that with as by at from model token expert latent attention "
         "router shard loader batch window epoch seed rank café naïve über 東京 数据 🙂 λ ∑").split()


def make_docs(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) for _ in range(rng.randint(1, 6))]
        docs.append(f"Document {i}.\n" + "\n".join(lines) + ("\n" if i % 3 else ""))
    return docs


DOCS = make_docs()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(make_docs(200, seed=1), 400)


@pytest.fixture(scope="module")
def tok_dir(tok, tmp_path_factory) -> Path:
    return tok.save(tmp_path_factory.mktemp("tok") / "tokenizer")


def write_formats(root: Path, docs: list[str]) -> dict[str, Path]:
    """The same documents as a folder of text files, JSONL, gzipped JSONL and multi-row-group Parquet."""
    folder = root / "txt"
    (folder / "sub").mkdir(parents=True)
    for i, d in enumerate(docs):  # sorted path order == document order; a nested folder is read too
        (folder / ("sub" if i >= len(docs) // 2 else "") / f"{i:04d}.txt").write_text(d, encoding="utf-8")
    (folder / "sub" / "zz.bin").write_bytes(b"\x00\x01binary")  # skipped: not text
    lines = "".join(json.dumps({"id": i, "text": d}, ensure_ascii=False) + "\n" for i, d in enumerate(docs))
    (root / "d.jsonl").write_text(lines, encoding="utf-8")
    with gzip.open(root / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    # FineWeb-style: text next to metadata columns, zstd, several row groups
    table = pa.table({"id": list(range(len(docs))), "text": docs, "url": [f"https://x/{i}" for i in range(len(docs))],
                      "language_score": [0.9] * len(docs)})
    pq.write_table(table, root / "d.parquet", row_group_size=7, compression="zstd")
    return {"txt": folder, "jsonl": root / "d.jsonl", "jsonl.gz": root / "d.jsonl.gz", "parquet": root / "d.parquet"}


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict[str, Path]:
    return write_formats(tmp_path_factory.mktemp("corpus"), DOCS)


@pytest.fixture(scope="module")
def data_dir(tok_dir, formats, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "run"
    assert cli.main(["data", "prepare", "--input", str(formats["jsonl"]), "--tokenizer", str(tok_dir),
                     "--output", str(out), "--val-docs", "6", "--shard-tokens", "700"]) == 0
    return out


def split_docs(tokens: np.ndarray, bos: int) -> list[list[int]]:
    starts = np.flatnonzero(tokens == bos)
    return [tokens[a:b].tolist() for a, b in zip(starts, [*starts[1:], len(tokens)])]


def read_split(d: Path, split: str) -> np.ndarray:
    m = read_manifest(d)
    return np.concatenate([np.fromfile(d / s["file"], dtype=m["dtype"]) for s in m["splits"][split]["shards"]])


# ---- prepare -------------------------------------------------------------------------------------------
def test_manifest_and_shards(data_dir, tok):
    m = read_manifest(data_dir)
    assert (m["format"], m["version"], m["dtype"]) == ("nanoseek-token-shards", 2, "uint16")
    assert m["tokenizer_fingerprint"] == tok.fingerprint() and m["vocab_size"] == tok.vocab_size
    assert m["splits"]["val"]["documents"] == 6 and m["total_documents"] == len(DOCS)
    assert m["total_tokens"] == sum(m["splits"][s]["tokens"] for s in ("train", "val"))
    assert len(m["splits"]["train"]["shards"]) > 3  # --shard-tokens 700 cut it into several files
    for split in ("train", "val"):
        for s in m["splits"][split]["shards"]:
            arr = np.fromfile(data_dir / s["file"], dtype=np.uint16)
            assert len(arr) == s["tokens"] and (arr == tok.bos_id).sum() == s["documents"]
            assert arr[0] == tok.bos_id  # shards are cut at document boundaries
            assert s["tokens"] <= 700 or s["documents"] == 1
    # every document is in exactly one split, encoded as <|bos|> + tokens
    expected = sorted([tok.bos_id, *tok.encode(d)] for d in DOCS)
    train, val = (split_docs(read_split(data_dir, s), tok.bos_id) for s in ("train", "val"))
    assert sorted(train + val) == expected
    assert not {tuple(d) for d in train} & {tuple(d) for d in val}
    # --val-docs N holds out the N documents with the smallest text hashes
    want_val = sorted(DOCS, key=doc_hash)[:6]
    assert sorted(val) == sorted([tok.bos_id, *tok.encode(d)] for d in want_val)
    # the run folder is self-contained
    assert Tokenizer.load(data_dir / "tokenizer").fingerprint() == tok.fingerprint()
    assert not [p for p in data_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_all_formats_give_identical_shards(tok, tok_dir, formats, tmp_path):
    outs = {}
    for name, path in formats.items():
        outs[name] = tmp_path / name
        m = prepare([path], tok_dir, outs[name], val_fraction=0.1, shard_tokens=900, progress=False)
        assert m["total_documents"] == len(DOCS)
    assert read_manifest(outs["txt"])["skipped_files"] == 1
    ref = {s: read_split(outs["jsonl"], s) for s in ("train", "val")}
    assert len(ref["val"]) > 0
    for name in formats:
        for s in ("train", "val"):
            assert np.array_equal(read_split(outs[name], s), ref[s]), (name, s)
        assert read_manifest(outs[name])["splits"] == read_manifest(outs["jsonl"])["splits"]


def test_parallel_workers_and_chunking_do_not_change_output(tok_dir, formats, tmp_path):
    a = prepare([formats["parquet"]], tok_dir, tmp_path / "a", workers=1, progress=False)
    b = prepare([formats["parquet"]], tok_dir, tmp_path / "b", workers=2, chunk_chars=300, progress=False)
    assert a["splits"] == b["splits"]
    for s in ("train", "val"):
        assert np.array_equal(read_split(tmp_path / "a", s), read_split(tmp_path / "b", s))
    assert a["splits"]["val"]["documents"] >= 1  # 1% of 60 docs rounds to 0: at least one is held out


def test_text_units_and_max_docs(tok, tok_dir, tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("para one\nline two\n\npara two\n\n\npara three\n")
    m = prepare([f], tok, tmp_path / "p", val_fraction=0, read=_ro(text_unit="paragraph"), progress=False)
    assert m["total_documents"] == 3 and m["splits"]["val"]["tokens"] == 0
    got = [tok.decode(d[1:]) for d in split_docs(read_split(tmp_path / "p", "train"), tok.bos_id)]
    assert sorted(got) == sorted(["para one\nline two", "para two", "para three"])
    m = prepare([f], tok, tmp_path / "l", val_docs=1, read=_ro(text_unit="line", max_docs=3), progress=False)
    assert m["total_documents"] == 3
    # in a folder a .json file is a text document (package.json in a code corpus); named alone it is JSON lines
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "package.json").write_text('{\n  "name": "x"\n}\n')
    (folder / "main.py").write_text("print('hi')\n")
    assert prepare([folder], tok, tmp_path / "c", val_fraction=0, progress=False)["total_documents"] == 2
    (tmp_path / "recs.json").write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    assert prepare([tmp_path / "recs.json"], tok, tmp_path / "j", val_docs=1, progress=False)["total_documents"] == 3


def _ro(**kw):
    from nanoseek.data import ReadOptions

    return ReadOptions(**kw)


def test_uint32_shards_when_vocab_exceeds_uint16(tmp_path):
    """A vocabulary over 65,536 ids switches the shards to uint32 and keeps ids above 65,535 intact."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from nanoseek.tokenizer import byte_to_unicode

    n_filler = 70_000
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"f{i}": len(SPECIAL_TOKENS) + i for i in range(n_filler)})  # ids below the byte tokens
    for b, ch in sorted(byte_to_unicode().items()):
        vocab[ch] = len(vocab)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(SPECIAL_TOKENS)
    big = Tokenizer(hf)
    assert big.vocab_size > 65_536
    out = tmp_path / "big"
    m = prepare([_write(tmp_path / "t.jsonl", DOCS[:10])], big, out, val_docs=1, progress=False)
    assert m["dtype"] == "uint32"
    stream = np.concatenate([read_split(out, "train"), read_split(out, "val")])
    assert stream.dtype == np.uint32 and stream.max() > 65_535
    assert sorted(split_docs(stream, big.bos_id)) == sorted([big.bos_id, *big.encode(d)] for d in DOCS[:10])
    x, y = PackedLoader(out, "train", 16, 2).next_batch()
    assert x.max().item() > 65_535


def _write(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


# ---- loader --------------------------------------------------------------------------------------------
def test_batches_shift_and_shapes(data_dir):
    loader = PackedLoader(data_dir, "train", seq_len=16, batch_size=3)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (3, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert loader.tokens_per_batch == 48
    # the eval pass walks the stored stream in order: windows of seq_len+1 overlapping by one token
    stream = torch.from_numpy(read_split(data_dir, "train").astype(np.int64))
    ev = list(PackedLoader(data_dir, "train", 16, 1).iter_eval())
    assert len(ev) == (len(stream) - 1) // 16
    xs = torch.cat([x for x, _ in ev]).flatten()
    ys = torch.cat([y for _, y in ev]).flatten()
    assert torch.equal(xs, stream[:len(xs)]) and torch.equal(ys, stream[1:len(ys) + 1])


def test_deterministic_for_a_seed_and_epochs_cover_each_window_once(data_dir):
    def run(seed, n):
        loader = PackedLoader(data_dir, "train", 16, 4, seed=seed)
        return loader, [loader.next_batch()[0] for _ in range(n)]

    a, xa = run(7, 10)
    _, xb = run(7, 10)
    _, xc = run(8, 10)
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
    assert not all(torch.equal(p, q) for p, q in zip(xa, xc))
    loader, xs = run(3, 0)
    n = loader.batches_per_epoch
    epoch0 = torch.cat([loader.next_batch()[0] for _ in range(n)])
    assert loader.epoch == 0
    loader.next_batch()
    assert loader.epoch == 1
    # one epoch = distinct windows of the stream (the stored-order pass holds them all)
    all_windows = {tuple(r.tolist()) for x, _ in PackedLoader(data_dir, "train", 16, 1).iter_eval() for r in x}
    rows = [tuple(r.tolist()) for r in epoch0]
    assert len(rows) == n * 4 and len(set(rows)) == len(rows) and set(rows) <= all_windows


def test_state_restore_continues_exactly(data_dir):
    ref = PackedLoader(data_dir, "train", 16, 4, seed=5)
    total = ref.batches_per_epoch + 5  # crosses an epoch boundary
    expected = [ref.next_batch() for _ in range(total)]
    first = PackedLoader(data_dir, "train", 16, 4, seed=5)
    for _ in range(7):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip (checkpoints)
    resumed = PackedLoader(data_dir, "train", 16, 4, seed=5)
    resumed.load_state_dict(state)
    for want in expected[7:]:
        got = resumed.next_batch()
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(DataError, match="seed"):
        PackedLoader(data_dir, "train", 16, 4, seed=6).load_state_dict(state)


def test_ranks_are_disjoint_and_cover_the_global_batch(data_dir):
    single = PackedLoader(data_dir, "train", 8, 4, seed=1)
    ranks = [PackedLoader(data_dir, "train", 8, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(single.batches_per_epoch + 3):
        x, y = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        assert not {tuple(r) for r in parts[0][0].tolist()} & {tuple(r) for r in parts[1][0].tolist()}
    ev1 = [x for x, _ in single.iter_eval(max_batches=4)]
    ev2 = [[x for x, _ in r.iter_eval(max_batches=4)] for r in ranks]
    assert len(ev1) == 4 and all(len(e) == 4 for e in ev2)
    for k in range(4):
        assert torch.equal(torch.cat([ev2[0][k], ev2[1][k]]), ev1[k])
    # same batches every call, and the training position is untouched
    state = single.state_dict()
    assert all(torch.equal(p, q) for p, q in zip(ev1, [x for x, _ in single.iter_eval(max_batches=4)]))
    assert single.state_dict() == state


def test_loader_errors(data_dir, tok, tmp_path):
    other = Tokenizer.train(make_docs(100, seed=9), 350)
    with pytest.raises(DataError, match="tokenizer mismatch"):
        PackedLoader(data_dir, "train", 16, 2, tokenizer=other)
    PackedLoader(data_dir, "train", 16, 2, tokenizer=tok)  # the right one is accepted
    with pytest.raises(DataError, match="fewer than one global batch"):
        PackedLoader(data_dir, "val", 512, 64)
    with pytest.raises(DataError, match="has no manifest"):
        PackedLoader(tmp_path, "train", 16, 2)
    with pytest.raises(DataError, match="no split"):
        PackedLoader(data_dir, "test", 16, 2)


# ---- bad input through the CLI: exit 2, one clear message, nothing written ------------------------------
def _no_output(path: Path) -> bool:
    return not path.exists() and not any(p.name.startswith(f".{path.name}.") for p in path.parent.iterdir())


def test_prepare_bad_input_cli(tok_dir, formats, tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.parquet").write_bytes(b"this is not parquet at all")
    raw = formats["parquet"].read_bytes()
    (bad / "cut.parquet").write_bytes(raw[: len(raw) // 2])
    (bad / "empty").mkdir()
    (bad / "blank.jsonl").write_text("\n\n")
    (bad / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    cases = [
        ([str(tmp_path / "nope.txt")], [], "does not exist"),
        ([str(bad / "empty")], [], "empty corpus"),
        ([str(bad / "blank.jsonl")], [], "empty corpus"),
        ([str(bad / "garbage.parquet")], [], "cannot read Parquet file"),
        ([str(bad / "cut.parquet")], [], "cannot read Parquet file"),
        ([str(bad / "broken.jsonl")], [], "broken.jsonl:2: not valid JSON"),
        ([str(formats["jsonl"])], ["--field", "body"], "no field 'body'"),
        ([str(formats["parquet"])], ["--column", "body"], "no column 'body'"),
        ([str(formats["parquet"])], ["--column", "id"], "not text"),
        ([str(formats["jsonl"])], ["--val-docs", str(len(DOCS))], "too few to hold out"),
        ([str(formats["jsonl"])], ["--val-fraction", "1.5"], "--val-fraction"),
    ]
    for inputs, extra, msg in cases:
        cli_error(capsys, ["data", "prepare", "--input", *inputs, "--tokenizer", str(tok_dir), "--output", str(out),
                           *extra], msg)
        assert _no_output(out), (inputs, extra)
    cli_error(capsys, ["data", "prepare", "--input", str(formats["jsonl"]), "--tokenizer", str(tmp_path / "notok"),
                       "--output", str(out)], "no tokenizer")
    assert _no_output(out)
    # an existing folder that is not a data directory is never replaced
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("mine")
    cli_error(capsys, ["data", "prepare", "--input", str(formats["jsonl"]), "--tokenizer", str(tok_dir),
                       "--output", str(out)], "not a nanoseek data directory")
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_fingerprint_mismatch_and_truncated_shard_cli(data_dir, tok_dir, tmp_path, capsys):
    import shutil

    assert cli.main(["data", "info", str(data_dir), "--tokenizer", str(tok_dir)]) == 0
    other = Tokenizer.train(make_docs(100, seed=9), 350).save(tmp_path / "other")
    cli_error(capsys, ["data", "info", str(data_dir), "--tokenizer", str(other)], "tokenizer mismatch")
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    shard = copy / read_manifest(copy)["splits"]["train"]["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    cli_error(capsys, ["data", "info", str(copy)], "truncated")
    with pytest.raises(DataError, match="truncated"):
        PackedLoader(copy, "train", 16, 2)
    cli_error(capsys, ["data", "info", str(tmp_path / "absent")], "does not exist")
    # re-preparing over an existing data directory replaces it atomically
    assert cli.main(["data", "prepare", "--input", str(_write(tmp_path / "s.jsonl", DOCS[:20])), "--tokenizer",
                     str(tok_dir), "--output", str(copy), "--val-docs", "2"]) == 0
    assert read_manifest(copy)["total_documents"] == 20
    assert cli.main(["data", "info", str(copy)]) == 0
