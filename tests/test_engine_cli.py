"""`nanoseek generate` and `nanoseek chat`, driven as a user would: flags, files, stdin, scripted chat input."""

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


def test_generate_rejects_bad_requests(ckpt, tmp_path, capsys):
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit) as e:
            main(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--max-tokens", bad])
        assert e.value.code == 2
        assert "--max-tokens" in capsys.readouterr().err
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
    # cached conversation (at least the previous turn's prompt) instead of computing it again
    stats = [line for line in out.splitlines() if line.startswith("[") and "prompt tokens" in line]
    sizes = [int(s[1:].split()[0]) for s in stats]
    reused = [int(s.split("(")[1].split()[0]) for s in stats]
    assert len(sizes) == 3 and sizes[0] < sizes[1] < sizes[2]
    assert reused[0] == 0 and reused[1] >= sizes[0] and reused[2] >= sizes[1]


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
