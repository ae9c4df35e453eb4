"""Tokenizer: training through the CLI, round trips, HF compatibility, the chat template and its mask."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nanoseek import cli
from nanoseek.errors import UserError
from nanoseek.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError

from cli_helpers import cli_error

UNICODE = [
    "héllo wörld — naïve café, Zürich; ñandú",
    "你好，世界。这是一个测试。日本語のテキストも。",
    "emoji 🙂🚀👩‍👩‍👧 flags 🇩🇪 and math ∑ x² ≤ ∞",
    "Ελληνικά και русский текст, עברית, العربية",
    "  leading spaces\ttabs\r\nwindows newlines\n\n\ntrailing   ",
    "numbers 1234567890 3.14159 -42 1e10 0xFF",
    "combining e\u0301 and zero\u200bwidth, nul\x00byte",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello."}],
    [{"role": "user", "content": "Compute 17*3."},
     {"role": "assistant", "reasoning": "17*3 = 51, check: 50+1.", "content": "51"},
     {"role": "user", "content": "and déjà vu 🙂?"},
     {"role": "assistant", "reasoning": "", "content": "Empty reasoning still gets a think block."}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "  spaces \n\n newline"},
     {"role": "assistant", "content": None}],
]


def corpus_texts() -> list[str]:
    """Python's own standard library sources plus varied Unicode: no network needed."""
    import email
    import json as json_mod

    files = sorted(Path(email.__file__).parent.glob("*.py")) + sorted(Path(json_mod.__file__).parent.glob("*.py"))
    return [f.read_text(encoding="utf-8") for f in files] + UNICODE * 3


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    src = root / "corpus"
    src.mkdir()
    for i, t in enumerate(corpus_texts()):
        (src / f"doc{i:03d}.txt").write_text(t, encoding="utf-8")
    out = root / "tokenizer"
    assert cli.main(["tokenizer", "train", "--input", str(src), "--vocab-size", "700", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer.load(tok_dir)


def test_cli_writes_hf_files_and_special_ids(tok_dir, tok):
    assert {p.name for p in tok_dir.iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                                    "special_tokens_map.json"}
    assert tok.vocab_size == 700
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(9))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.end_id, tok.think_id, tok.think_end_id) == (0, 1, 2, 6, 7, 8)
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"]) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert "chat_template" in cfg
    # loading the json file itself works too
    assert Tokenizer.load(tok_dir / "tokenizer.json").fingerprint() == tok.fingerprint()


def test_round_trip_unicode(tok):
    for text in UNICODE + corpus_texts()[:3]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    # merges were learned: common code is compressed well below one token per byte
    src = corpus_texts()[0]
    assert len(tok.encode(src)) < 0.5 * len(src.encode())
    assert tok.encode("abc", add_bos=True)[0] == tok.bos_id
    assert tok.encode_batch(UNICODE) == [tok.encode(t) for t in UNICODE]


def test_special_token_text_is_plain_text_unless_allowed(tok):
    text = "a <|user|> b <think>"
    assert not set(tok.encode(text)) & set(range(9))
    assert tok.decode(tok.encode(text)) == text
    assert tok.user_id in tok.encode(text, allow_special=True)
    assert tok.decode([tok.bos_id, *tok.encode("x")], skip_special_tokens=True) == "x"


def test_token_bytes_count_utf8_bytes(tok):
    tb = tok.token_bytes()
    assert tb.shape == (tok.vocab_size,)
    assert (tb[:9] == 0).all() and (tb[9:] > 0).all()
    for text in UNICODE:  # incl. tokens that hold a fraction of a multi-byte character
        ids = tok.encode(text)
        assert int(tb[ids].sum()) == len(text.encode("utf-8"))


def test_fingerprint_stable_and_discriminating(tok, tok_dir, tmp_path):
    reformatted = tmp_path / "tokenizer.json"  # same content, different formatting
    reformatted.write_text(json.dumps(json.loads((tok_dir / "tokenizer.json").read_text())))
    assert Tokenizer.load(reformatted).fingerprint() == tok.fingerprint()
    other = Tokenizer.train(corpus_texts(), 650)
    assert other.fingerprint() != tok.fingerprint()


def test_save_keeps_other_files(tok, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    tok.save(tmp_path)
    assert (tmp_path / "config.json").read_text() == "{}"
    assert Tokenizer.load(tmp_path).fingerprint() == tok.fingerprint()


def test_hf_fast_tokenizer_loads_same_ids(tok, tok_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(tok_dir))
    for text in UNICODE:
        assert fast(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
        assert auto(text)["input_ids"] == tok.encode(text)
        assert auto.decode(tok.encode(text)) == text
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (0, 1, 2)


@pytest.mark.parametrize("gen", [False, True])
def test_hf_chat_template_matches_render_chat(tok, tok_dir, gen):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    for msgs in CONVERSATIONS:
        ids, mask = tok.render_chat(msgs, add_generation_prompt=gen)
        out = hf.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True)
        hf_ids = list(out["input_ids"] if hasattr(out, "keys") else out)
        assert hf_ids == ids
        assert len(mask) == len(ids)
        assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1  # HF added no second <|bos|>
        assert (ids[-1] == tok.assistant_id) == gen


def test_render_chat_format_and_assistant_mask(tok):
    msgs = CONVERSATIONS[2]
    ids, mask = tok.render_chat(msgs, add_generation_prompt=True)
    expected = ("<|bos|><|user|>Compute 17*3.<|end|><|assistant|><think>17*3 = 51, check: 50+1.</think>51<|end|>"
                "<|user|>and déjà vu 🙂?<|end|><|assistant|><think></think>Empty reasoning still gets a think "
                "block.<|end|><|assistant|>")
    assert tok.decode(ids) == expected
    # the masked tokens are exactly what the assistant wrote, turn by turn
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    assert cur == []
    assert [tok.decode(r) for r in runs] == ["<think>17*3 = 51, check: 50+1.</think>51<|end|>",
                                             "<think></think>Empty reasoning still gets a think block.<|end|>"]
    unmasked = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert unmasked == "<|bos|><|user|>Compute 17*3.<|end|><|assistant|><|user|>and déjà vu 🙂?<|end|>" \
                       "<|assistant|><|assistant|>"
    # no reasoning key: no think block
    ids2, mask2 = tok.render_chat(CONVERSATIONS[1])
    assert tok.think_id not in ids2 and tok.decode([i for i, m in zip(ids2, mask2) if m]) == "Hello.<|end|>"
    assert tok.stop_ids == (tok.end_id, tok.eos_id)


def test_render_chat_rejects_bad_messages(tok):
    with pytest.raises(TokenizerError, match="role"):
        tok.render_chat([{"role": "tool", "content": "x"}])
    with pytest.raises(TokenizerError, match="content"):
        tok.render_chat([{"role": "user", "content": [{"type": "text"}]}])


def _no_output(path: Path) -> bool:
    return not path.exists() and not any(p.name.startswith(f".{path.name}.") for p in path.parent.iterdir())


def test_cli_errors_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "tok"
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text " * 50)
    cases = [
        (["--input", str(tmp_path / "missing.txt"), "--vocab-size", "300"], "does not exist"),
        (["--input", str(corpus), "--vocab-size", "100"], "too small"),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("")
    cases.append((["--input", str(empty), "--vocab-size", "300"], "empty corpus"))
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"content": "x"}\n')
    cases.append((["--input", str(jl), "--vocab-size", "300"], "no field 'text'"))
    for args, msg in cases:
        err = cli_error(capsys, ["tokenizer", "train", *args, "--output", str(out)], msg)
        assert err.count("\n") <= 3  # one clear line (plus progress output)
        assert _no_output(out)
    assert cli.main(["tokenizer", "train", "--input", str(jl), "--field", "content", "--vocab-size", "300",
                     "--output", str(out)]) == 0
    assert Tokenizer.load(out).decode(Tokenizer.load(out).encode("x")) == "x"


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer"):
        Tokenizer.load(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer.load(tmp_path)
    assert isinstance(TokenizerError("x"), UserError)
    assert os.listdir(tmp_path) == ["tokenizer.json"]


def test_max_digits_one_gives_each_digit_its_own_token(tmp_path):
    """`tokenizer train --max-digits 1`: numbers are read and written digit by digit (column arithmetic for
    small models); the default keeps GPT-4's groups of up to 3 digits, which BPE merges."""
    corpus = tmp_path / "nums.txt"
    corpus.write_text("What is 123 + 456? 123+456=579\n" * 200)
    for digits, out in (("1", tmp_path / "one"), ("3", tmp_path / "three")):
        assert cli.main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--max-digits", digits,
                         "--output", str(out)]) == 0
    one, three = Tokenizer.load(tmp_path / "one"), Tokenizer.load(tmp_path / "three")
    assert [one.decode([i]) for i in one.encode("579")] == ["5", "7", "9"]
    assert [three.decode([i]) for i in three.encode("579")] == ["579"]
    assert one.fingerprint() != three.fingerprint()
