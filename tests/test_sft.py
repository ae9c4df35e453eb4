"""Supervised fine-tuning: assistant-only targets, packing that computes what each conversation computes alone,
per-token normalization over the whole step, the loss going down, `nanoseek sft` resuming after SIGKILL bit
for bit, and clear errors for bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import nanoseek
import nanoseek.train.rewards
from nanoseek.cli import main as cli
from nanoseek.config import preset
from nanoseek.data.chat import (IGNORE_INDEX, ChatData, PackedChat, inputs_and_targets, normalize_messages, pack,
                                read_chat, render, split_validation)
from nanoseek.errors import DataError
from nanoseek.train.log import read_log
from nanoseek.train.loop import train
from nanoseek.train.sft import SFTConfig, SFTTask

from cli_helpers import cli_error
from chat_helpers import build_checkpoint, build_sft_data, build_tokenizer
from train_helpers import assert_resumes_bit_for_bit, dying_after_log, nanoseek_cmd, run, train_records


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("sft_tok"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    return build_checkpoint(tmp_path_factory.mktemp("sft_ckpt"), tok)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    return build_sft_data(tmp_path_factory.mktemp("sft_data") / "sft.jsonl")


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "reasoning_content": "2+3=5", "content": "5"},  # OpenAI-style alias of "reasoning"
    {"role": "user", "content": [{"type": "text", "text": "And 4 + 4"}, {"type": "text", "text": "?"}]},
    {"role": "assistant", "content": "7", "weight": 0},  # context only: not trained
    {"role": "user", "content": "Again?"},
    {"role": "assistant", "content": "8"},
]


# ---- targets ----------------------------------------------------------------------------------------------
def test_targets_are_exactly_the_assistant_tokens(tok):
    messages = normalize_messages({"messages": CHAT}, "x:1")
    assert messages[2]["reasoning"] == "2+3=5" and messages[3]["content"] == "And 4 + 4?"
    ids, mask = render(tok, messages)
    x, y = inputs_and_targets(ids, mask)
    assert len(x) == len(y) == len(ids) - 1 and (x == np.array(ids[:-1])).all()
    # where each message's tokens sit: render_chat renders a message after the ones before it
    spans = [(len(tok.render_chat(messages[:i])[0]), len(tok.render_chat(messages[:i + 1])[0]))
             for i in range(len(messages))]
    trained = [j for i in (2, 6) for j in range(spans[i][0] + 1, spans[i][1])]  # all but the <|assistant|> marker
    want = np.full(len(y), IGNORE_INDEX)
    for j in trained:
        want[j - 1] = ids[j]  # target i is token i+1
    assert (y == want).all()
    assert tok.decode(y[y != IGNORE_INDEX].tolist()) == "<think>2+3=5</think>5<|end|>8<|end|>"
    # the first trained target follows the <|assistant|> marker, and no user, system or weight-0 token is trained
    first = int(np.flatnonzero(y != IGNORE_INDEX)[0])
    assert x[first] == tok.assistant_id and y[first] == tok.think_id
    assert tok.user_id not in y[y != IGNORE_INDEX] and tok.system_id not in y[y != IGNORE_INDEX]
    # without weights and aliases the mask is render_chat's, shifted by one
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "reasoning": "r", "content": "c"}]
    ids2, mask2 = tok.render_chat(plain)
    _, y2 = inputs_and_targets(*render(tok, normalize_messages(plain, "x:1")))
    assert [t for t, m in zip(ids2[1:], mask2[1:]) if m] == y2[y2 != IGNORE_INDEX].tolist()


@pytest.mark.parametrize("line, needle", [
    ("{not json", "not valid JSON"),
    ('{"prompt": "p", "answer": "a"}', 'a "messages" list'),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "tool", "content": "x"}]}', "tool calls are not supported"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}', "must be a string"),
    ('{"messages": [{"role": "user", "content": "q", "reasoning": "r"}, {"role": "assistant", "content": "a"}]}',
     "only assistant messages carry reasoning"),
    ('{"messages": [{"role": "assistant", "content": "a", "reasoning": "r", "reasoning_content": "s"}]}', "differ"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "no assistant message"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]}',
     '"weight" is 0 or 1'),
])
def test_bad_lines_name_the_file_and_line(tok, tmp_path, line, needle):
    f = tmp_path / "chat.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    f.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(DataError) as e:
        read_chat(f, tok, 64)
    assert f"{f}:3" in str(e.value) and needle in str(e.value), str(e.value)


def test_long_conversations_are_cut_and_unlearnable_ones_dropped(tok, tmp_path):
    f = tmp_path / "chat.jsonl"
    long_prompt = {"messages": [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "a"}]}
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "long answer " * 20}]}
    f.write_text(json.dumps(long_prompt) + "\n" + json.dumps(ok) + "\n")
    data = read_chat(f, tok, 32)
    assert len(data) == 1 and data.dropped == [f"{f}:1"] and data.truncated == 2 and len(data.x[0]) == 32
    f.write_text(json.dumps(long_prompt) + "\n")
    with pytest.raises(DataError, match="raise --seq-len"):
        read_chat(f, tok, 32)


def test_validation_split_is_by_content():
    keys = [f"{i:016x}" for i in range(0, 2 ** 64 - 1, 2 ** 58)]  # 64 keys evenly spread over [0, 1)
    train_i, val_i = split_validation(keys, 0.25)
    assert val_i == list(range(16)) and train_i == list(range(16, 64))
    assert split_validation(keys[::-1], 0.25)[1] == list(range(48, 64))  # the same keys, whatever the order
    assert split_validation(keys[:2], 0.0) == ([0, 1], [])
    assert split_validation(["ffffffffffffffff", "8000000000000000"], 0.01)[1] == [1]  # at least one held out


# ---- packing ----------------------------------------------------------------------------------------------
def test_best_fit_packing():
    lengths = [5, 9, 3, 7, 2, 8, 4, 6]
    rows = pack(lengths, 10, range(8))
    assert sorted(c for r in rows for c in r.convs) == list(range(8))  # every conversation exactly once
    for r in rows:
        assert sum(lengths[c] for c in r.convs) <= 10
        assert r.offsets == [sum(lengths[c] for c in r.convs[:i]) for i in range(len(r.convs))]
    # by hand: 9 leaves room 1 (closed: nothing is that short); 3 joins 5; 2 fills 5+3 exactly (best fit over
    # 7's room 3); 8 and 4 open rows; 6 fills 4's
    assert [r.convs for r in rows] == [[0, 2, 4], [1], [3], [5], [6, 7]]
    assert pack(lengths, 10, range(8)) == rows  # deterministic
    first = pack([3, 3, 3], 10, range(3), first_only=[False, True, False])
    assert [r.convs for r in first] == [[0, 2], [1]]


@pytest.mark.parametrize("depth", [1, 2])
def test_a_packed_row_computes_what_each_conversation_computes_alone(tok, depth):
    """Main and MTP losses of a packed row (block-diagonal mask, conversations at offsets) equal the sums over the
    conversations run one by one; with D = 2 an assistant-first conversation is among them."""
    convs = [
        [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "reasoning": "2+0=2", "content": "42"}],
        [{"role": "assistant", "content": "Hello there, I am here."}],  # opens with the assistant: starts a row
        [{"role": "system", "content": "Sort."}, {"role": "user", "content": "3, 1, 2"},
         {"role": "assistant", "content": "1, 2, 3"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "?"},
         {"role": "assistant", "reasoning": "think", "content": "ok"}],
    ]
    xs, ys = zip(*(inputs_and_targets(*render(tok, normalize_messages(m, "x"))) for m in convs))
    data = ChatData(list(xs), list(ys), ["x"] * 4, ["k"] * 4)
    T = 96
    packed = PackedChat(data, T, depth, tok.pad_id)
    assert packed.first_only == [False, depth > 1, False, False]
    rows = packed.rows([1, 0, 2, 3])
    assert len(rows) == 1 and rows[0].convs[0] == 1 and len(rows[0].convs) == 4
    batch = packed.batch(rows)
    assert batch.tokens == sum(len(x) for x in xs) and batch.targets == sum(int((y >= 0).sum()) for y in ys)

    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size, num_nextn_predict_layers=depth)).eval()
    out = model(batch.x, targets=batch.y, attn_mask=batch.mask)
    assert len(out.mtp_losses) == depth and batch.mtp_targets[0] > 0
    alone_main, alone_mtp, alone_n = 0.0, [0.0] * depth, [0] * depth
    for x, y in zip(xs, ys):
        o = model(torch.from_numpy(x)[None], targets=torch.from_numpy(y)[None])
        alone_main += o.main_loss.item() * int((y >= 0).sum())
        for k in range(depth):
            n = int((y[k + 1:] >= 0).sum())  # depth k+1 predicts targets k+1.. of the conversation
            alone_mtp[k] += o.mtp_losses[k].item() * n
            alone_n[k] += n
    assert out.main_loss.item() * batch.targets == pytest.approx(alone_main, rel=1e-5)
    assert batch.mtp_targets == alone_n
    for k in range(depth):
        assert out.mtp_losses[k].item() * batch.mtp_targets[k] == pytest.approx(alone_mtp[k], rel=1e-5)


# ---- the training task --------------------------------------------------------------------------------------
def _cfg(**kw) -> SFTConfig:
    base = dict(steps=2, batch_size=4, seq_len=96, dtype="float32", eval_every=0, checkpoint_every=0, peak_flops=1e12,
                lr=3e-3, val_fraction=0.1)
    return SFTConfig(**{**base, **kw})


def test_loss_is_a_per_token_mean_over_the_whole_step(tok, sft_file, tmp_path):
    """grad_accum 1 x 4 rows and 2 x 2 rows see the same rows per step (micro-batches of different token
    counts): same losses and the same update. The logged main loss is the per-token mean over the step."""
    ckpt_model = lambda: nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size))
    runs = {}
    for name, kw in {"a": dict(batch_size=4), "b": dict(batch_size=2, grad_accum=2)}.items():
        torch.manual_seed(0)
        model = ckpt_model()
        task = SFTTask(sft_file, _cfg(**kw), tokenizer=tok, mtp_depth=1)
        if name == "a":  # the step's per-token mean by hand, on the initial weights
            probe = SFTTask(sft_file, _cfg(**kw), tokenizer=tok, mtp_depth=1)
            probe.begin_step(model, 1)
            b = probe._pending[0]
            with torch.no_grad():
                logits = model(b.x, attn_mask=b.mask)
                nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.y.flatten(), ignore_index=IGNORE_INDEX,
                                                        reduction="sum")
            by_hand = nll.item() / b.targets
        train(model, task, _cfg(**kw), tmp_path / name, progress=False, announce=lambda *_: None)
        runs[name] = [r for r in read_log(tmp_path / name) if r["event"] == "train"]
        runs[name + "_w"] = load_file(str(tmp_path / name / "checkpoints" / "step_0000002" / "model.safetensors"))
    a, b = runs["a"], runs["b"]
    assert a[0]["main_loss"] == pytest.approx(by_hand, rel=1e-5)
    counts = [r["target_tokens"] for r in a]
    assert counts == [r["target_tokens"] for r in b] and all(c > 0 for c in counts)
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "main_loss", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), key
    diffs = torch.cat([(runs["a_w"][k] - runs["b_w"][k]).abs().flatten() for k in runs["a_w"]])
    assert diffs.max() < 0.02 * 3e-3 and (diffs > 1e-6).float().mean() < 1e-3  # as pretraining's accumulation test


def test_micro_batches_hold_different_token_counts(tok, sft_file):
    """Why the normalization matters here: the two micro-batches of a step train on different numbers of tokens."""
    task = SFTTask(sft_file, _cfg(batch_size=2, grad_accum=2), tokenizer=tok, mtp_depth=1)
    seen = set()
    for step in range(1, 6):
        task.begin_step(None, step)
        seen.add(task._pending[0].targets != task._pending[1].targets)
    assert True in seen


def test_sft_cli_loss_goes_down_and_writes_checkpoints(ckpt, sft_file, tmp_path, capsys):
    from nanoseek.tokenizer import Tokenizer

    out = tmp_path / "run"
    rc = cli(["sft", "--checkpoint", str(ckpt), "--data", str(sft_file), "--out", str(out), "--steps", "40",
              "--batch-size", "4", "--seq-len", "128", "--lr", "3e-3", "--eval-every", "20", "--eval-batches", "4",
              "--checkpoint-every", "20", "--peak-flops", "1e12"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "training conversations" in printed and "held-out conversations" in printed and str(out) in printed
    recs = train_records(out)
    assert [r["step"] for r in recs] == list(range(1, 41))
    first, last = recs[0]["main_loss"], sum(r["main_loss"] for r in recs[-5:]) / 5
    assert first > math.log(tok_vocab(ckpt)) - 0.5  # starts near uniform
    assert last < first - 1.0, (first, last)
    assert all(0 < r["pack_fill"] <= 1 and r["target_tokens"] > 0 for r in recs)
    evals = [r for r in read_log(out) if r["event"] == "eval"]
    assert [e["step"] for e in evals] == [20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] and evals[-1]["val_accuracy"] > evals[0]["val_accuracy"]
    final = out / "checkpoints" / "step_0000040"
    assert Tokenizer.load(final).fingerprint() == Tokenizer.load(ckpt).fingerprint()  # the checkpoint's tokenizer
    gen = json.loads((final / "generation_config.json").read_text())
    assert sorted(gen["eos_token_id"]) == sorted(Tokenizer.load(ckpt).stop_ids)
    state = json.loads((final / "train_state" / "state.json").read_text())
    assert state["train_config"]["val_fraction"] == 0.05 and state["task_state"][0]["conversations"] > 0
    nanoseek.load_model(final)


def test_sft_logs_held_out_task_accuracy_at_each_evaluation(ckpt, sft_file, tmp_path):
    """--eval-problems-file: at each evaluation the live weights answer the problems greedily in the chat
    template and the log gets task_accuracy. Problems whose reference is the model's own greedy answer (and
    others that cannot be right) pin the figure to exactly one half."""
    from nanoseek.data import tasks
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.train.probe import AccuracyProbe

    def answers(prompts):  # the starting model's greedy answers, from a probe over exactly these prompts
        asked = [tasks.Problem("custom", q, "?", {"checker": "exact"}) for q in prompts]
        probe = AccuracyProbe(asked, Tokenizer.load(ckpt), style="chat", device=torch.device("cpu"))
        return [nanoseek.train.rewards.extract_answer(t) for t in probe.completions(nanoseek.load_model(ckpt))]

    many = [f"Say {i}." for i in range(40)]
    prompts = [q for q, a in zip(many, answers(many)) if a][:6]  # a random model sometimes opens <think>
    answers = answers(prompts)
    assert len(prompts) == 6 and all(answers)
    problems = tmp_path / "probe.jsonl"
    problems.write_text("".join(json.dumps({"prompt": q, "answer": a if i % 2 == 0 else "no model says this"}) + "\n"
                                for i, (q, a) in enumerate(zip(prompts, answers))))
    out = tmp_path / "run"
    # an lr far too small to change a weight and frozen router biases: the figure is the starting model's
    assert cli(["sft", "--checkpoint", str(ckpt), "--data", str(sft_file), "--out", str(out), "--steps", "2",
                "--batch-size", "2", "--seq-len", "128", "--lr", "1e-12", "--bias-update-gamma", "0", "--eval-every",
                "1", "--eval-batches", "1", "--peak-flops", "1e12", "--eval-problems-file", str(problems)]) == 0
    evals = [r for r in read_log(out) if r["event"] == "eval"]
    assert [e["task_accuracy"] for e in evals] == [0.5, 0.5]
    assert len(tasks.read_problems(problems)) == 6


def tok_vocab(ckpt) -> int:
    return json.loads((ckpt / "config.json").read_text())["vocab_size"]


# ---- resume -------------------------------------------------------------------------------------------------
STEPS = 24


def _args(ckpt, data, out, *extra):
    # bf16 autocast, MoE bias updates, MTP, balance loss, accumulation, Muon, epochs crossed (~40 rows/epoch)
    return nanoseek_cmd("sft", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--steps",
                        str(STEPS), "--batch-size", "2", "--grad-accum", "2", "--seq-len", "96", "--optimizer", "muon",
                        "--checkpoint-every", "4", "--eval-every", "8", "--eval-batches", "2", "--aux-loss-alpha",
                        "0.01", "--peak-flops", "1e12", *extra)


@pytest.mark.slow
def test_sft_resumes_after_sigkill_bit_for_bit(ckpt, tmp_path):
    data = build_sft_data(tmp_path / "sft.jsonl", n=40)
    # killed after step 9 (checkpoints at 4 and 8, an evaluation at 8): the resume redoes step 9 and crosses the
    # first epoch's end
    full, killed, stdout = assert_resumes_bit_for_bit(
        lambda out, *x: _args(ckpt, data, out, *x), tmp_path, STEPS, dying_after_log(tmp_path, "train", 9),
        train_keys=("loss", "main_loss", "mtp_losses", "balance_loss", "grad_norm", "lr", "target_tokens",
                    "pack_fill", "epoch", "router_bias_min", "router_bias_max", "expert_maxvio"),
        eval_keys=("val_loss", "val_accuracy"))
    assert "resumed from step_0000008" in stdout
    assert max(x["epoch"] for x in train_records(full)) > 1  # the run crossed an epoch boundary

    # another data file cannot continue the saved position
    other = build_sft_data(tmp_path / "other.jsonl", n=30)
    r = run(_args(ckpt, other, killed, "--resume", "--steps", str(STEPS + 2)))
    assert r.returncode == 2 and "other data" in r.stderr and "\n" not in r.stderr.strip()


# ---- the command's errors -------------------------------------------------------------------------------------
def test_bad_inputs_exit_2_with_clear_messages(ckpt, sft_file, tmp_path, capsys):
    def err(*args) -> str:
        return cli_error(capsys, ["sft", *args])

    out = str(tmp_path / "run")
    assert "no such file" in err("--checkpoint", str(ckpt), "--data", str(tmp_path / "nope.jsonl"), "--out", out)
    assert "--checkpoint DIR is required" in err("--data", str(sft_file), "--out", out)
    assert "no config.json" in err("--checkpoint", str(tmp_path), "--data", str(sft_file), "--out", out)
    assert "--val-fraction must be in [0, 1)" in err("--checkpoint", str(ckpt), "--data", str(sft_file), "--out", out,
                                                     "--val-fraction", "1.5")
    assert "exceeds the model's max_position_embeddings" in err("--checkpoint", str(ckpt), "--data", str(sft_file),
                                                                "--out", out, "--seq-len", "4096")
    assert "has no checkpoint to resume" in err("--data", str(sft_file), "--out", out, "--resume")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    msg = err("--checkpoint", str(ckpt), "--data", str(bad), "--out", out)
    assert f"{bad}:1" in msg and "no assistant message" in msg
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((ckpt / f).read_bytes())
    assert "has no tokenizer.json" in err("--checkpoint", str(no_tok), "--data", str(sft_file), "--out", out)


# ---- torchrun ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(ckpt, sft_file, tmp_path, parallel):
    """2 ranks x 2 rows see the rows 1 process x 4 rows sees (each rank takes its slice of the global batch), and
    every rank counts the whole step's assistant tokens: the same per-token losses and validation figures."""
    import sys

    def args(out, batch, *extra):
        return ["sft", "--checkpoint", str(ckpt), "--data", str(sft_file), "--out", str(out), "--steps", "3",
                "--batch-size", str(batch), "--seq-len", "96", "--dtype", "float32", "--eval-every", "3",
                "--eval-batches", "3", "--peak-flops", "1e12", *extra]

    single, multi = tmp_path / "single", tmp_path / parallel
    r = run(nanoseek_cmd(*args(single, 4)))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
             "nanoseek.cli", *args(multi, 2, "--parallel", parallel)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("training log:") == 1
    a, b = train_records(single), train_records(multi)
    assert [x["target_tokens"] for x in a] == [x["target_tokens"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5) and y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    ea, eb = ([(e["val_loss"], e["val_accuracy"]) for e in read_log(d) if e["event"] == "eval"] for d in (single, multi))
    assert len(eb) == 1 and eb[0] == pytest.approx(ea[0], rel=1e-5)
