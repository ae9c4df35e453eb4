"""Bad input to `convert`, `generate` and `chat`, and what `info` and `chat --help` say (issue 8: 2, 11, 12, 15, 16).
Everything through the `nanoseek` command; each case exits 2 with one message, or, in chat, keeps the session."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import nanoseek
from nanoseek.cli import main
from nanoseek.config import preset
from nanoseek.tokenizer import Tokenizer

CORPUS = ["The quick brown fox jumps over the lazy dog. Héllo wörld 中文 🙂.", "Another line of text."] * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    tok = Tokenizer.train(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    nanoseek.save_model(nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size)), path)
    tok.save(path)
    return path


def _run(capsys, argv, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:  # a real byte stream underneath, as a pipe gives
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


# ---- convert never writes over its input (8.2) ----------------------------------------------------------------
def test_convert_refuses_any_destination_that_touches_the_source(tmp_path, capsys):
    src = tmp_path / "models" / "fp32"
    assert main(["demo", "--new-tokens", "0", "--save", str(src)]) == 0
    before = _digest(src)
    (tmp_path / "link").symlink_to(src)
    for dest, what in [(src, "is the source directory"), (tmp_path / "link", "is the source directory"),
                       (src / "bf16", "inside the source directory"), (src.parent, "holds the source directory"),
                       (tmp_path, "holds the source directory")]:
        rc, _, err = _run(capsys, ["convert", str(src), str(dest)])
        assert rc == 2 and what in err, (dest, err)
    assert _digest(src) == before and sorted(p.name for p in src.parent.iterdir()) == ["fp32"]
    rc, out, _ = _run(capsys, ["convert", str(src), str(tmp_path / "bf16")])
    assert rc == 0 and _digest(src) == before
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


# ---- info: vLLM's MLA kernels, the GPU presets (8.16) ---------------------------------------------------------
def test_info_says_whether_vllm_mla_kernels_serve_the_shape(tmp_path, capsys):
    rc, out, _ = _run(capsys, ["info", "--preset", "cpu-small"])
    assert rc == 0 and "served by vLLM's MLA kernels" in out and "no: latent 64 + 16 = 80" in out
    assert "576 on CPU and 320, 512 or 576 on its GPU backends" in out
    for name, total in [("gpu-0.5b", "509,780,736"), ("gpu-3b", "2,994,347,520")]:
        rc, out, _ = _run(capsys, ["info", "--preset", name])
        assert rc == 0 and "yes: latent 512 + 64 = 576" in out and total in out
        cfg = preset(name)  # fine-grained MoE, first layer dense, one MTP module, DeepSeek's head shapes
        assert (cfg.first_k_dense_replace, cfg.num_nextn_predict_layers, cfg.n_routed_experts) == (1, 1, 64)
        assert (cfg.qk_nope_head_dim, cfg.v_head_dim) == (128, 128)
    nanoseek.ModelConfig(**{**preset("tiny").__dict__, "kv_lora_rank": 256, "extra": {}}).validate().save(tmp_path)
    rc, out, _ = _run(capsys, ["info", "--checkpoint", str(tmp_path)])  # 256 + 8 = 264: no
    assert rc == 0 and "no: latent 256 + 8 = 264" in out


def test_chat_help_lists_the_chat_commands(capsys):
    rc, out, _ = _run(capsys, ["chat", "--help"])
    assert rc == 0
    for cmd in ("/clear", "/system", "/temperature", "/help", "/quit", '"""'):
        assert cmd in out


# ---- generate: bad input exits 2 with one message (8.11) -------------------------------------------------------
def test_generate_bad_input(ckpt, tmp_path, capsys, monkeypatch):
    base = ["generate", "--checkpoint", str(ckpt), "--max-tokens", "2", "--temperature", "0"]
    rc, _, err = _run(capsys, base, stdin=b"caf\xe9 au lait\n", monkeypatch=monkeypatch)
    assert rc == 2 and "stdin is not UTF-8 text (byte 0xe9 on line 1)" in err
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"fine\ncaf\xe9\n")
    rc, _, err = _run(capsys, [*base, "--prompts-file", str(latin)])
    assert rc == 2 and f"--prompts-file {latin} is not UTF-8 text (byte 0xe9 on line 2)" in err
    rc, _, err = _run(capsys, [*base, "--prompt", "x", "-o", str(tmp_path)])
    assert rc == 2 and "is a directory" in err and not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))
    rc, _, err = _run(capsys, [*base, "--prompt", "x", "--seed", str(1 << 64)])
    assert rc == 2 and "--seed" in err and "2^64-1" in err
    rc, out, err = _run(capsys, [*base, "--prompt", "x", "--seed", str((1 << 64) - 1)])
    assert rc == 0, err
    msgs = tmp_path / "m.jsonl"
    for bad in ('{"messages": [{"role": "user"}]}', '{"messages": [{"content": "hi"}]}',
                '{"messages": [{"role": "user", "content": 5}]}', '{"messages": ["hi"]}'):
        msgs.write_text('{"prompt": "ok"}\n' + bad + "\n")
        rc, _, err = _run(capsys, [*base, "--prompts-file", str(msgs)])
        assert rc == 2 and "line 2: messages[0] must be an object with a \"role\" and a \"content\" string" in err


def test_generate_samples_underflowing_values_greedily_and_refuses_non_finite_ones(ckpt, capsys):
    """temperature / top_p / repetition_penalty of 1e-300 (5e-324) overflow float32 in the sampler (issue 22.2):
    they answer (tiny temperatures and top_p greedily); inf and nan exit 2 naming the setting."""
    base = ["generate", "--checkpoint", str(ckpt), "--max-tokens", "4", "--prompt", "The quick", "--seed", "1"]
    rc, greedy, err = _run(capsys, [*base, "--temperature", "0"])
    assert rc == 0, err
    for flags in (["--temperature", "1e-300"], ["--temperature", "5e-324"], ["--temperature", "1", "--top-p", "1e-300"],
                  ["--temperature", "1", "--top-p", "5e-324"], ["--temperature", "0.7", "--repetition-penalty", "1e-300"]):
        rc, out, err = _run(capsys, [*base, *flags])
        assert rc == 0, (flags, err)
        if "--repetition-penalty" not in flags:
            assert json.loads(out)["token_ids"] == json.loads(greedy)["token_ids"], flags
    for flag, value in (("--temperature", "inf"), ("--temperature", "nan"), ("--top-p", "nan"), ("--min-p", "nan"),
                        ("--repetition-penalty", "inf"), ("--presence-penalty", "inf"), ("--frequency-penalty", "nan")):
        rc, _, err = _run(capsys, [*base, flag, value])
        assert rc == 2 and flag[2:].replace("-", "_") in err and "finite" in err, (flag, value, err)


# ---- a checkpoint's tokenizer: unreadable, or not the model's (issue 22.8 and its small things) --------------------
@pytest.mark.parametrize("garbage", [b'{"version": 1, 5: 3}', b"[]", b'{"model": 5}', b"", b"\x89PNG\r\n\x00\xff",
                                     b'{"model": {"type": "BPE", "vocab": [1, 2]}}'])
def test_a_garbage_tokenizer_json_is_one_message_in_every_command(ckpt, tmp_path, capsys, garbage):
    bad = tmp_path / "model"
    shutil.copytree(ckpt, bad)
    (bad / "tokenizer.json").write_bytes(garbage)
    for argv in (["generate", "--checkpoint", str(bad), "--prompt", "x", "--max-tokens", "1"],
                 ["eval", "--checkpoint", str(bad), "--task", "arithmetic", "--n", "1", "--max-tokens", "1"],
                 ["rl", "--checkpoint", str(bad), "--task", "arithmetic", "--out", str(tmp_path / "rl")]):
        rc, _, err = _run(capsys, argv)
        assert rc == 2 and f"{bad / 'tokenizer.json'} is not a readable tokenizer" in err, (argv, err)


def test_a_tokenizer_that_is_not_the_models_is_warned_about(ckpt, tmp_path, capsys):
    """A checkpoint whose tokenizer files were swapped for another tokenizer's (smaller, larger, or only
    tokenizer.json) loads with a warning; its own tokenizer loads without one."""
    base = ["generate", "--max-tokens", "2", "--prompt", "The quick", "--temperature", "0"]
    rc, _, err = _run(capsys, [*base, "--checkpoint", str(ckpt)])
    assert rc == 0 and "warning" not in err, err
    for vocab, files in ((280, ("tokenizer.json",)), (280, ("tokenizer.json", "tokenizer_config.json")),
                         (320, ("tokenizer.json", "tokenizer_config.json"))):
        other = Tokenizer.train(["Something else entirely, in other words."] * 30 + CORPUS[:2], vocab_size=vocab)
        swapped = tmp_path / f"{vocab}-{len(files)}"
        shutil.copytree(ckpt, swapped)
        other.save(tmp_path / "other")
        for f in files:
            shutil.copy(tmp_path / "other" / f, swapped / f)
        rc, _, err = _run(capsys, [*base, "--checkpoint", str(swapped)])
        assert "nanoseek generate: warning: " in err, (vocab, files, err)
        assert ("come from different tokenizers" if len(files) == 1 else
                f"its tokenizer has {other.vocab_size} tokens but the model 300") in err, err


# ---- chat: a bad value is refused, an error in an answer never ends the session (8.11, 8.12) -------------------
def test_chat_refuses_bad_values_and_survives_errors(ckpt, capsys, monkeypatch):
    from nanoseek.cli import chat

    seen: list[list[str]] = []
    real_render = Tokenizer.render_chat

    def spy(self, messages, **kw):  # what each answer is conditioned on
        seen.append([m["content"] for m in messages])
        return real_render(self, messages, **kw)

    class Splitter(chat.ReasoningSplitter):  # a fault in the middle of the second answer
        def feed(self, text):
            if seen and seen[-1][-1] == "second":
                raise RuntimeError("injected fault")
            return super().feed(text)

    monkeypatch.setattr(Tokenizer, "render_chat", spy)
    monkeypatch.setattr(chat, "ReasoningSplitter", Splitter)
    script = b"first\n/temperature nan\n/temperature -1\ncaf\xe9\nsecond\nthird\n/temperature\n/quit\n"
    rc, out, err = _run(capsys, ["chat", "--checkpoint", str(ckpt), "--max-tokens", "3", "--color", "never",
                                 "--temperature", "0"], stdin=script, monkeypatch=monkeypatch)
    assert rc == 0, err
    assert out.count("/temperature needs a number >= 0 (0 = greedy), got") == 2
    assert "that input is not UTF-8 text (byte 0xe9 on line 1)" in out and "that message was not sent" in out
    assert "[error during the answer: RuntimeError: injected fault]" in out
    assert "the conversation before it is kept" in out
    assert "temperature 0" in out  # the session went on to the end; nan never reached the sampler
    # the third answer saw the first exchange and not the failed message
    assert [c for c in seen[-1] if c in ("first", "second", "third")] == ["first", "third"]
    assert len(seen[-1]) == 3
