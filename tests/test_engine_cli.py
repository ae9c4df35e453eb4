"""`nanoseek generate` and `nanoseek chat`, driven as a user would: flags, files, stdin, scripted chat input; bad
input (exit 2 with one message, or, in chat, the session kept) and a checkpoint's unreadable or mismatched tokenizer."""

import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import nanoseek
from nanoseek.cli import main
from nanoseek.config import preset
from nanoseek.engine import ContextLengthError, Conversation, Delta, Engine, SamplingParams
from nanoseek.cli.chat import DIM, RESET, ChatSession
from nanoseek.engine.reasoning import ReasoningSplitter
from nanoseek.tokenizer import Tokenizer

from cli_helpers import cli_run


CORPUS = ["The quick brown fox jumps over the lazy dog. Héllo wörld 中文 🙂.", "Another line of text."] * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = Tokenizer.train(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size))
    path = tmp_path_factory.mktemp("ckpt") / "model"
    nanoseek.save_model(model, path)
    tok.save(path)
    return path


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_prompts_from_args_file_and_stdin(ckpt, tmp_path, capsys, monkeypatch):
    rc, out, err = run(["generate", "--checkpoint", str(ckpt), "--prompt", "The quick", "--prompt", "Hello",
                        "--max-tokens", "6", "--temperature", "0", "--logprobs", "2"], capsys)
    assert rc == 0, err
    recs = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in recs] == ["The quick", "Hello"]
    eng = Engine.load(ckpt)
    want = eng.generate("The quick", SamplingParams(max_new_tokens=6, temperature=0))
    assert recs[0]["token_ids"] == want.token_ids and recs[0]["text"] == want.text
    assert recs[0]["finish_reason"] == "length" and recs[0]["completion_tokens"] == 6
    assert len(recs[0]["logprobs"]) == 6 and len(recs[0]["logprobs"][0]["top"]) == 2
    assert "tok/s decode" in err and "B/token" in err

    pf = tmp_path / "prompts.txt"
    pf.write_text('plain line prompt\n\n{"prompt": "json prompt"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    outfile = tmp_path / "out.jsonl"
    rc, out, err = run(["generate", "--checkpoint", str(ckpt), "--prompts-file", str(pf), "--max-tokens", "3",
                        "--seed", "3", "--speculative", "2", "-o", str(outfile)], capsys)
    assert rc == 0, err
    recs = [json.loads(line) for line in outfile.read_text().splitlines()]
    assert [r.get("prompt") for r in recs] == ["plain line prompt", "json prompt", None]
    assert recs[2]["messages"][0]["content"] == "hi" and all("acceptance_rate" in r for r in recs)

    rc, out, err = run(["generate", "--checkpoint", str(ckpt), "--max-tokens", "2", "--temperature", "0"],
                       capsys, stdin="from stdin\nsecond\n", monkeypatch=monkeypatch)
    assert rc == 0, err
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["from stdin", "second"]

    # a training run directory: its checkpoints/latest pointer names the checkpoint to load
    run_dir = tmp_path / "run"
    shutil.copytree(ckpt, run_dir / "checkpoints" / "step_0000010")
    (run_dir / "checkpoints" / "latest").write_text("step_0000010\n")
    rc, out, err = run(["generate", "--checkpoint", str(run_dir), "--prompt", "The quick", "--max-tokens", "6",
                        "--temperature", "0"], capsys)
    assert rc == 0, err
    assert json.loads(out)["token_ids"] == want.token_ids


def test_prompt_files_and_completion_records_from_python(ckpt):
    """What `nanoseek generate` runs, through the library: a prompt file's lines, batched, as versioned records
    in prompt order, equal to generating each prompt alone."""
    from nanoseek.engine import Engine, SamplingParams
    from nanoseek.engine.prompts import FORMAT_VERSION, generate_batches, parse_prompts
    from nanoseek.errors import UserError

    items = parse_prompts('one\n\n{"prompt": "two"}\n{"messages": [{"role": "user", "content": "hi"}]}\nfour\n',
                          "prompts.txt")
    assert items[0] == {"prompt": "one"} and "messages" in items[2] and len(items) == 4
    engine = Engine.load(ckpt)
    params = SamplingParams(max_new_tokens=4, temperature=0)
    batches = list(generate_batches(engine, items, params, batch_size=3))
    assert [len(records) for records, _ in batches] == [3, 1]
    records = [r for rs, _ in batches for r in rs]
    assert [r["index"] for r in records] == [0, 1, 2, 3] and {r["format_version"] for r in records} == {FORMAT_VERSION}
    assert sum(stats.generated_tokens for _, stats in batches) == sum(r["completion_tokens"] for r in records)
    alone = engine.generate([engine.tokenizer.encode("four")], params)[0]
    assert records[3]["prompt"] == "four" and records[3]["token_ids"] == alone.token_ids
    with pytest.raises(UserError, match=r"prompts.txt line 2: messages\[0\] must be an object"):
        parse_prompts('ok\n{"messages": ["hi"]}\n', "prompts.txt")


def test_generate_rejects_bad_requests(ckpt, tmp_path, capsys):
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit) as e:
            main(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--max-tokens", bad])
        assert e.value.code == 2
        assert "--max-tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--speculative", "fast"])
    assert e.value.code == 2 and "--speculative: must be auto or a number of draft tokens >= 0" in capsys.readouterr().err
    rc, _, err = run(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--max-tokens", "100000"], capsys)
    assert rc == 2 and "exceeds the model's context length of 512 tokens" in err
    rc, _, err = run(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"], capsys)
    assert rc == 2 and "no config.json" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    rc, _, err = run(["generate", "--checkpoint", str(ckpt), "--prompts-file", str(bad)], capsys)
    assert rc == 2 and "line 2: not valid JSON" in err
    rc, _, err = run(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--top-p", "0"], capsys)
    assert rc == 2 and "top_p" in err


@pytest.mark.slow  # a process of its own: ~5 s, most of it importing torch
def test_chat_scripted_session(ckpt):
    """The real command with piped input: commands, a multi-line block, a continued line, then /quit."""
    script = ('/system Be terse.\nHello there\n/temperature 0\n"""\nline one\nline two\n"""\n'
              'continued \\\nline\n/temperature abc\n/clear\n/quit\n')
    p = subprocess.run([sys.executable, "-m", "nanoseek.cli", "chat", "--checkpoint", str(ckpt), "--max-tokens", "5",
                        "--color", "never"], input=script, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for expected in ("system prompt set: Be terse.", "temperature 0", "... line two", "needs a number >= 0",
                     "conversation cleared"):
        assert expected in out
    # three answers, each reporting its context: it grows with the conversation, and each turn reuses the
    # cached conversation (at least the previous turn's prompt) instead of computing it again. The tiny model
    # has an MTP module and speculation is auto: a greedy turn whose draft cache holds all but the last
    # reused position computes that one again (its hidden state pairs with the next token in the draft cache)
    stats = [line for line in out.splitlines() if line.startswith("[") and "prompt tokens" in line]
    sizes = [int(s[1:].split()[0]) for s in stats]
    reused = [int(s.split("(")[1].split()[0]) for s in stats]
    assert len(sizes) == 3 and sizes[0] < sizes[1] < sizes[2]
    assert reused[0] == 0 and reused[1] >= sizes[0] - 1 and reused[2] >= sizes[1] - 1


class _Scripted:
    """An engine stand-in whose stream plays a fixed answer (to drive rendering and interruption)."""

    def __init__(self, engine, pieces, interrupt_after=None):
        self.engine, self.pieces, self.interrupt_after = engine, pieces, interrupt_after
        self.config, self.stats, self.max_len = engine.config, engine.stats, engine.max_len

    def encode_chat(self, messages):
        return self.engine.encode_chat(messages)

    def stream(self, ids, params, speculative=0):
        for i, text in enumerate(self.pieces):
            if self.interrupt_after is not None and i == self.interrupt_after:
                raise KeyboardInterrupt
            yield Delta(0, text, [1], "stop" if i == len(self.pieces) - 1 else None)


def test_chat_dims_reasoning_and_ctrl_c_stops_only_the_answer(ckpt):
    eng = Engine.load(ckpt)
    out = io.StringIO()
    lines = iter(["first question", "second question", "/quit"])
    session = ChatSession(_Scripted(eng, ["<think>let me", " think</think>The", " answer."]), SamplingParams(),
                          out=out, color=True)
    session.run(lambda prompt: next(lines) if True else None)
    text = out.getvalue()
    assert f"{DIM}let me" in text and "The answer." in text
    assert f" think{RESET}\nThe answer." in text  # the answer starts a line of its own
    # reasoning is not fed back: the history holds the answer only
    assert session.messages[1] == {"role": "assistant", "content": "The answer."}
    assert len(session.messages) == 4

    # without colour the answer is labelled, so it never runs on from the reasoning ("=85" then "85")
    out = io.StringIO()
    lines = iter(["question", "/quit"])
    session = ChatSession(_Scripted(eng, ["<think>4+3=7", "</think>", "7"]), SamplingParams(), out=out)
    session.run(lambda prompt: next(lines))
    assert "4+3=7\nanswer: 7\n" in out.getvalue()
    assert session.messages[1] == {"role": "assistant", "content": "7"}

    out = io.StringIO()
    lines = iter(["question", "/temperature 0.5", "/quit"])
    session = ChatSession(_Scripted(eng, ["Partial", " answer", " never"], interrupt_after=2), SamplingParams(),
                          out=out)
    session.run(lambda prompt: next(lines))
    text = out.getvalue()
    assert "Partial answer" in text and "[stopped]" in text and "never" not in text
    assert "temperature 0.5" in text  # the loop went on after Ctrl-C
    assert session.messages[-1]["content"] == "Partial answer"


def test_reasoning_splitter_handles_tags_inside_pieces():
    s = ReasoningSplitter()
    assert s.feed("a<think>b") == [("answer", "a"), ("reasoning", "b")]
    assert s.feed("c</think>d<think>") == [("reasoning", "c"), ("answer", "d")]
    assert s.thinking


def test_a_conversation_from_python_keeps_answers_not_reasoning_and_refuses_a_full_context(ckpt):
    """The Python API under `nanoseek chat`: each answer streams as reasoning and answer pieces; the history
    keeps the answers only; a conversation that fills the context raises before generating and keeps nothing."""
    eng = Engine.load(ckpt)
    chat = Conversation(_Scripted(eng, ["<think>3+4", "=7</think>", " 7"]), SamplingParams(max_new_tokens=8),
                        system="Answer briefly.")
    pieces = list(chat.ask("What is 3 + 4?"))
    assert pieces == [("reasoning", "3+4"), ("reasoning", "=7"), ("answer", " 7")]
    assert chat.messages == [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}]
    assert chat.last.new_tokens == 3 and chat.last.finish == "stop"
    assert chat.last.prompt_tokens == len(eng.encode_chat([{"role": "system", "content": "Answer briefly."},
                                                          {"role": "user", "content": "What is 3 + 4?"}]))
    # a real engine: greedy pieces joined are the completion the engine gives for the same prompt
    chat = Conversation(eng, SamplingParams(max_new_tokens=6, temperature=0, skip_special_tokens=False))
    text = "".join(t for _, t in chat.ask("hello"))
    ids = eng.encode_chat([{"role": "user", "content": "hello"}])
    done = eng.generate(ids, SamplingParams(max_new_tokens=6, temperature=0, skip_special_tokens=False))
    assert text == done.text.replace("<think>", "").replace("</think>", "")
    # a question longer than the context: refused, nothing kept
    before = list(chat.messages)
    for question in ("word " * eng.max_len, "word " * (eng.max_len // 2 - 20)):  # too long; fills it
        with pytest.raises(ContextLengthError, match="more than the context|fills the context"):
            list(chat.ask(question))
    assert chat.messages == before
    chat.clear()
    assert chat.messages == []


def test_chat_help_lists_the_chat_commands(capsys):
    rc, out, _ = cli_run(capsys, ["chat", "--help"])
    assert rc == 0
    for cmd in ("/clear", "/system", "/temperature", "/help", "/quit", '"""'):
        assert cmd in out


# ---- generate: bad input exits 2 with one message (8.11) -------------------------------------------------------
def test_generate_bad_input(ckpt, tmp_path, capsys, monkeypatch):
    base = ["generate", "--checkpoint", str(ckpt), "--max-tokens", "2", "--temperature", "0"]
    rc, _, err = cli_run(capsys, base, stdin=b"caf\xe9 au lait\n", monkeypatch=monkeypatch)
    assert rc == 2 and "stdin is not UTF-8 text (byte 0xe9 on line 1)" in err
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"fine\ncaf\xe9\n")
    rc, _, err = cli_run(capsys, [*base, "--prompts-file", str(latin)])
    assert rc == 2 and f"--prompts-file {latin} is not UTF-8 text (byte 0xe9 on line 2)" in err
    rc, _, err = cli_run(capsys, [*base, "--prompt", "x", "-o", str(tmp_path)])
    assert rc == 2 and "is a directory" in err and not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))
    rc, _, err = cli_run(capsys, [*base, "--prompt", "x", "--seed", str(1 << 64)])
    assert rc == 2 and "--seed" in err and "2^64-1" in err
    rc, out, err = cli_run(capsys, [*base, "--prompt", "x", "--seed", str((1 << 64) - 1)])
    assert rc == 0, err
    msgs = tmp_path / "m.jsonl"
    for bad in ('{"messages": [{"role": "user"}]}', '{"messages": [{"content": "hi"}]}',
                '{"messages": [{"role": "user", "content": 5}]}', '{"messages": ["hi"]}'):
        msgs.write_text('{"prompt": "ok"}\n' + bad + "\n")
        rc, _, err = cli_run(capsys, [*base, "--prompts-file", str(msgs)])
        assert rc == 2 and "line 2: messages[0] must be an object with a \"role\" and a \"content\" string" in err


def test_generate_samples_underflowing_values_greedily_and_refuses_non_finite_ones(ckpt, capsys):
    """temperature / top_p / repetition_penalty of 1e-300 (5e-324) overflow float32 in the sampler (issue 22.2):
    they answer (tiny temperatures and top_p greedily); inf and nan exit 2 naming the setting."""
    base = ["generate", "--checkpoint", str(ckpt), "--max-tokens", "4", "--prompt", "The quick", "--seed", "1"]
    rc, greedy, err = cli_run(capsys, [*base, "--temperature", "0"])
    assert rc == 0, err
    for flags in (["--temperature", "1e-300"], ["--temperature", "5e-324"], ["--temperature", "1", "--top-p", "1e-300"],
                  ["--temperature", "1", "--top-p", "5e-324"], ["--temperature", "0.7", "--repetition-penalty", "1e-300"]):
        rc, out, err = cli_run(capsys, [*base, *flags])
        assert rc == 0, (flags, err)
        if "--repetition-penalty" not in flags:
            assert json.loads(out)["token_ids"] == json.loads(greedy)["token_ids"], flags
    for flag, value in (("--temperature", "inf"), ("--temperature", "nan"), ("--top-p", "nan"), ("--min-p", "nan"),
                        ("--repetition-penalty", "inf"), ("--presence-penalty", "inf"), ("--frequency-penalty", "nan")):
        rc, _, err = cli_run(capsys, [*base, flag, value])
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
        rc, _, err = cli_run(capsys, argv)
        assert rc == 2 and f"{bad / 'tokenizer.json'} is not a readable tokenizer" in err, (argv, err)


def test_a_tokenizer_that_is_not_the_models_is_warned_about(ckpt, tmp_path, capsys):
    """A checkpoint whose tokenizer files were swapped for another tokenizer's (smaller, larger, or only
    tokenizer.json) loads with a warning; its own tokenizer loads without one."""
    base = ["generate", "--max-tokens", "2", "--prompt", "The quick", "--temperature", "0"]
    rc, _, err = cli_run(capsys, [*base, "--checkpoint", str(ckpt)])
    assert rc == 0 and "warning" not in err, err
    for vocab, files in ((280, ("tokenizer.json",)), (280, ("tokenizer.json", "tokenizer_config.json")),
                         (320, ("tokenizer.json", "tokenizer_config.json"))):
        other = Tokenizer.train(["Something else entirely, in other words."] * 30 + CORPUS[:2], vocab_size=vocab)
        swapped = tmp_path / f"{vocab}-{len(files)}"
        shutil.copytree(ckpt, swapped)
        other.save(tmp_path / "other")
        for f in files:
            shutil.copy(tmp_path / "other" / f, swapped / f)
        rc, _, err = cli_run(capsys, [*base, "--checkpoint", str(swapped)])
        assert "nanoseek generate: warning: " in err, (vocab, files, err)
        assert ("come from different tokenizers" if len(files) == 1 else
                f"its tokenizer has {other.vocab_size} tokens but the model 300") in err, err


# ---- chat: a bad value is refused, an error in an answer never ends the session (8.11, 8.12) -------------------
def test_chat_refuses_bad_values_and_survives_errors(ckpt, capsys, monkeypatch):
    from nanoseek.engine import conversation

    seen: list[list[str]] = []
    real_render = Tokenizer.render_chat

    def spy(self, messages, **kw):  # what each answer is conditioned on
        seen.append([m["content"] for m in messages])
        return real_render(self, messages, **kw)

    class Splitter(conversation.ReasoningSplitter):  # a fault in the middle of the second answer
        def feed(self, text):
            if seen and seen[-1][-1] == "second":
                raise RuntimeError("injected fault")
            return super().feed(text)

    monkeypatch.setattr(Tokenizer, "render_chat", spy)
    monkeypatch.setattr(conversation, "ReasoningSplitter", Splitter)
    script = b"first\n/temperature nan\n/temperature -1\ncaf\xe9\nsecond\nthird\n/temperature\n/quit\n"
    rc, out, err = cli_run(capsys, ["chat", "--checkpoint", str(ckpt), "--max-tokens", "3", "--color", "never",
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
