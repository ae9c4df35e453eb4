"""Text in and out: UTF-8 characters split across tokens, stop strings split across tokens (never emitted,
held back while streaming), chat prompts, and loading a checkpoint directory with its tokenizer."""

import json

import pytest
import torch

import nanoseek
from nanoseek.cli import main as cli
from nanoseek.config import preset
from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.detokenize import TextStream
from nanoseek.tokenizer import Tokenizer, byte_to_unicode

from conftest import randomize_


CORPUS = ["The quick brown fox jumps over the lazy dog. Héllo wörld, ça va? 中文字符 and émojis 🙂🚀.",
          "Stop strings END here. Another line\n\nwith a blank line before it. Ünïcödé everywhere: 日本語."] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=320)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size)).eval()
    randomize_(m)
    return m


def byte_ids(tok, text):
    """One token per UTF-8 byte: every multi-byte character is split across tokens."""
    table = byte_to_unicode()
    return [tok.token_to_id(table[b]) for b in text.encode("utf-8")]


def test_stream_never_splits_a_utf8_character(tok):
    text = "aé中🙂b 日本語 ça"
    ids = byte_ids(tok, text)
    assert len(ids) > len(text)  # characters really are split
    s = TextStream(tok)
    pieces = [s.push(t) for t in ids]
    pieces.append(s.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # every piece is whole characters: after each push, what was released decodes from complete bytes
    assert pieces[ids.index(byte_ids(tok, "🙂")[0])] == ""  # first byte of the emoji alone: held back


def test_stop_string_split_across_tokens_is_caught_and_never_emitted(tok):
    text = "abc ENxD more END tail"
    s = TextStream(tok, stop=["END"])
    out = []
    for i, t in enumerate(byte_ids(tok, text)):
        out.append(s.push(t))
        if s.stopped:
            break
    assert "".join(out) == "abc ENxD more "
    assert s.stopped == "END"
    assert all("E" not in p for p in out[-4:])  # "E", "EN" were held back, then cut, never emitted
    assert s.push(5) == "" and s.flush() == ""


def test_held_back_prefix_is_released_when_generation_ends(tok):
    s = TextStream(tok, stop=["<END>"])
    out = [s.push(t) for t in byte_ids(tok, "x <EN")]
    assert "".join(out) == "x "  # "<EN" could still become "<END>"
    assert s.flush() == "<EN"


def test_stop_strings_through_the_engine(tok, model):
    """Greedy text from the model, then a stop string spanning two of its tokens: the output ends right
    before it, identically in streaming and non-streaming use, and speculative decoding agrees."""
    eng = Engine(model, tok)
    prompt = "The quick brown"
    free = eng.generate(prompt, SamplingParams(max_new_tokens=40, temperature=0))
    pieces = [tok.decode([t]) for t in free.token_ids]
    text = free.text
    # a stop string made of the end of one token and the start of the next, first occurring there
    for i in range(3, len(pieces) - 1):
        a, b = pieces[i], pieces[i + 1]
        if a and b and "\ufffd" not in a + b:
            stop = a[-1] + b[0]
            cut = text.find(stop)
            if cut == len("".join(pieces[:i + 1])) - 1:
                break
    else:
        pytest.fail("the model's greedy output has no token boundary to put a stop string across")
    p = SamplingParams(max_new_tokens=40, temperature=0, stop=[stop])
    out = eng.generate(prompt, p)
    assert out.text == text[:cut] and out.finish_reason == "stop" and out.stop_reason == stop
    streamed = list(eng.stream(prompt, p))
    assert "".join(d.text for d in streamed) == out.text
    assert all(stop not in d.text for d in streamed)
    assert streamed[-1].finish_reason == "stop"
    spec = Engine(eng.model, eng.tokenizer, speculative=2).generate(prompt, p)
    assert spec.text == out.text and spec.token_ids == out.token_ids


def test_checkpoint_dir_with_tokenizer_and_chat_prompt(tok, model, tmp_path):
    nanoseek.save_model(model, tmp_path / "ckpt")
    tok.save(tmp_path / "ckpt")
    eng = Engine.load(tmp_path / "ckpt")
    assert eng.eos_ids == {tok.end_id, tok.eos_id}
    ids = eng.encode_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert ids[0] == tok.bos_id and ids[-1] == tok.assistant_id
    out = eng.generate(ids, SamplingParams(max_new_tokens=5, temperature=0))
    ref = Engine(model, tok).generate(ids, SamplingParams(max_new_tokens=5, temperature=0))
    assert out.token_ids == ref.token_ids
    # generation for chat ends at <|end|>: force it by making it the only stop id the output can hit
    forced = eng.generate(ids, SamplingParams(max_new_tokens=5, temperature=0, stop_token_ids=[out.token_ids[2]]))
    assert forced.finish_reason == "stop" and len(forced.token_ids) <= 3
    bf16 = Engine.load(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert len(bf16.generate(ids, SamplingParams(max_new_tokens=5, temperature=0)).token_ids) == 5


def test_generation_config_stop_ids_end_generation(tok, model, tmp_path, capsys):
    """A checkpoint's generation_config.json names the stop ids (as HF generate and vLLM read them); a broken
    one is a clear error through `nanoseek generate`, not a traceback."""
    nanoseek.save_model(model, tmp_path / "ckpt")
    tok.save(tmp_path / "ckpt")
    prompt = tok.encode("def main():")
    free = Engine.load(tmp_path / "ckpt").generate(prompt, SamplingParams(max_new_tokens=6, temperature=0,
                                                                          ignore_eos=True)).token_ids
    stop_ids = {tok.eos_id, free[3]}
    gen = tmp_path / "ckpt" / "generation_config.json"
    gen.write_text(json.dumps({"eos_token_id": sorted(stop_ids)}))
    eng = Engine.load(tmp_path / "ckpt")
    stop_ids |= set(tok.stop_ids)  # the tokenizer's end of turn stops as well
    assert eng.eos_ids == stop_ids
    out = eng.generate(prompt, SamplingParams(max_new_tokens=6, temperature=0))
    first = min(i for i, t in enumerate(free) if t in stop_ids)  # <= 3
    assert out.finish_reason == "stop" and out.token_ids == free[:first + 1]
    gen.write_text('{"eos_token_id": "end"}')
    assert cli(["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "x"]) == 2
    assert "generation_config.json is not a valid generation config" in capsys.readouterr().err

