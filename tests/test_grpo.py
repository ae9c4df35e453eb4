"""GRPO: advantages, the KL estimator and every loss variant against hand-computed values; the engine's
log-probabilities of the sampled tokens equal the trainer's; a short seeded run raises the reward; `nanoseek rl`
logs what it should, refuses bad input, and resumes after SIGKILL bit for bit."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

import nanoseek
from nanoseek.cli import main as cli
from nanoseek.config import preset
from nanoseek.data.tasks import generate, render_text
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.grpo import GRPOConfig, GRPOTask, aggregate, group_advantages, kl_k3, surrogate
from nanoseek.train.log import read_log
from nanoseek.train.loop import train
from nanoseek.train.pretrain import write_tokenizer_files

from cli_helpers import cli_error
from train_helpers import assert_resumes_bit_for_bit, dying_in_checkpoint, nanoseek_cmd, run, train_records


# ---- the math -------------------------------------------------------------------------------------------------
def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    a = group_advantages(r, eps=0.0)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of [1, 0, 0, 1]
    torch.testing.assert_close(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.equal(a[1], torch.zeros(4))  # no variance, no signal
    torch.testing.assert_close(group_advantages(r, scale=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # a group of equal rewards gets exact zeros, also where its float mean is rounded (eight times 0.1)
    for scale in (True, False):
        assert torch.equal(group_advantages(torch.full((1, 8), 0.1), scale=scale), torch.zeros(1, 8))


def test_kl_k3_by_hand():
    lp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.0, -1.0, -2.0])
    want = [0.0, math.e - 1 - 1, math.exp(-1.5) + 1.5 - 1]  # r - log r - 1 with r = exp(ref - lp)
    torch.testing.assert_close(kl_k3(lp, ref), torch.tensor(want))
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_surrogate_clips_only_where_the_ratio_leaves_the_trust_region():
    old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1]))  # ratios
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, clipped = surrogate(lp, old, adv, eps_low=0.2, eps_high=0.28)
    # A > 0, ratio 1.5 > 1.28: clipped to 1.28; A < 0, ratio 1.5: unclipped -1.5 is the min (pessimistic);
    # A < 0, ratio 0.5 < 0.8: clipped to 0.8; ratio 1.1 inside: unclipped
    torch.testing.assert_close(loss, torch.tensor([-1.28, 1.5, 0.8, -1.1]))
    assert clipped.tolist() == [True, False, True, False]


def test_loss_aggregation_variants_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # grpo: each completion's mean (2, 4), summed, over the step's 2 completions
    assert aggregate(per_token, mask, "grpo", norm=2, max_new_tokens=4).item() == pytest.approx((2 + 4) / 2)
    # dr_grpo: token sum over completions x max_new_tokens
    assert aggregate(per_token, mask, "dr_grpo", norm=2 * 4, max_new_tokens=4).item() == pytest.approx(10 / 8)
    # dapo: token sum over the step's tokens
    assert aggregate(per_token, mask, "dapo", norm=4, max_new_tokens=4).item() == pytest.approx(10 / 4)


def test_config_validation_names_the_flag():
    with pytest.raises(ValueError, match="--group-size"):
        GRPOConfig(group_size=1).validate()
    with pytest.raises(ValueError, match="--steps .* multiple of --updates-per-generation"):
        GRPOConfig(steps=10, updates_per_generation=3, checkpoint_every=9).validate()
    assert GRPOConfig(loss_type="dapo").eps_high == 0.28 and GRPOConfig().eps_high == 0.2


# ---- on a model -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    problems = generate("arithmetic", "train", 80, 1)
    tok = Tokenizer.train([render_text(p) for p in problems] * 3, vocab_size=400)
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size, num_nextn_predict_layers=0))
    ckpt = tmp_path_factory.mktemp("rl") / "start"
    nanoseek.save_model(model, ckpt)
    write_tokenizer_files(tok, ckpt)
    return tok, problems, ckpt


class StartsWithDigit:
    """A reward a random tiny model sometimes earns: the completion's text starts with a digit."""

    weights = {"digit": 1.0}

    def scores(self, prompt, completion, reference):
        r = 1.0 if completion.lstrip()[:1].isdigit() else 0.0
        return {"digit": r, "reward": r}


def _run_api(setup, tmp_path, steps, **kw):
    tok, problems, ckpt = setup
    model = nanoseek.load_model(ckpt, dtype=torch.float32)
    cfg = GRPOConfig(steps=steps, dtype="float32", eval_every=0, checkpoint_every=0, peak_flops=1e12,
                     eval_problems=4, **kw)
    cfg.grad_accum = cfg.micro_batches(1)
    task = GRPOTask(cfg, tok, problems, problems[:4], device=torch.device("cpu"), rewards=StartsWithDigit())
    train(model, task, cfg, tmp_path / "run", progress=False, announce=lambda *a: None)
    return [r for r in read_log(tmp_path / "run") if r["event"] == "train"]


@pytest.mark.parametrize("updates", [1, 2])
def test_engine_logprobs_of_sampled_tokens_equal_the_trainers(setup, tmp_path, updates):
    """updates 1: the loss measures the mismatch on its own forward at every step; 2: pi_old is scored right
    after sampling, at each generation step. Either way a generation after optimizer steps follows them."""
    recs = _run_api(setup, tmp_path, 2 * updates, lr=1e-2, prompts_per_step=2, group_size=4, max_new_tokens=6,
                    updates_per_generation=updates)
    measured = [r for r in recs if "logprob_mismatch_max" in r]
    assert [r["step"] for r in measured] == list(range(1, 2 * updates + 1, updates))
    assert all(r["logprob_mismatch_max"] < 1e-4 for r in measured)
    assert {"reward", "reward_std", "zero_variance_groups", "completion_len", "completion_len_max", "truncated",
            "clip_fraction", "entropy", "reward_digit", "reward_accuracy"} <= recs[0].keys()


def test_one_update_per_generation_takes_pi_old_from_its_own_forward(setup, tmp_path, monkeypatch):
    """Skipping the separate pi_old forward (pi_old = pi when each generation gets one update, as TRL does)
    trains exactly as scoring pi_old first does."""
    kw = dict(lr=1e-2, prompts_per_step=2, group_size=4, max_new_tokens=6)
    fast = _run_api(setup, tmp_path / "fast", 3, **kw)
    score = GRPOTask._score_old_policy
    monkeypatch.setattr(GRPOTask, "_score_old_policy", lambda self, model, policy=True: score(self, model, True))
    scored = _run_api(setup, tmp_path / "scored", 3, **kw)
    for a, b in zip(fast, scored):
        assert a["reward"] == b["reward"]  # the same rollouts: the weights agree step after step
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["clip_fraction"] == b["clip_fraction"] == 0.0


def test_completions_with_zero_advantage_are_not_trained_and_change_nothing(setup, tmp_path, monkeypatch):
    """Training only the completions with a nonzero advantage gives the gradients of training on all of them
    (and the same rollouts after each step), in fewer rows."""
    kw = dict(lr=1e-2, prompts_per_step=4, group_size=4, max_new_tokens=6, batch_size=4, bias_update_gamma=0.0)
    lean = _run_api(setup, tmp_path / "lean", 3, **kw)
    assert all(0 < r["trained_fraction"] < 1 for r in lean)  # some groups were all right or all wrong
    assert sum(r["tokens"] for r in lean) < sum(r["completion_len"] * 16 for r in lean)
    monkeypatch.setattr(GRPOTask, "_to_train", lambda self: list(self.rollouts))
    full = _run_api(setup, tmp_path / "full", 3, **kw)
    for a, b in zip(lean, full):
        assert a["reward"] == b["reward"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-9)


def test_dynamic_sampling_replaces_groups_whose_rewards_agree(setup, tmp_path):
    """With --dynamic-sampling the places of groups whose rewards all agree go to mixed groups of further prompts;
    the logged policy metrics stay those of the first round, which is the plain run's."""
    kw = dict(lr=1e-2, prompts_per_step=4, group_size=4, max_new_tokens=6, batch_size=16)
    plain = _run_api(setup, tmp_path / "plain", 2, **kw)
    dyn = _run_api(setup, tmp_path / "dyn", 2, dynamic_sampling=3, **kw)
    assert dyn[0]["reward"] == plain[0]["reward"]  # the first round samples what the plain run does
    assert dyn[0]["zero_variance_groups"] > 0  # there was something to replace
    for r in dyn:
        assert 1 <= r["sampling_rounds"] <= 3 and r["informative_groups"] >= 1 - r["zero_variance_groups"]
    assert dyn[0]["informative_groups"] > 1 - dyn[0]["zero_variance_groups"]
    assert dyn[0]["trained_fraction"] > plain[0]["trained_fraction"]
    # what RL changes, per step: lengths of right and wrong answers, the strategies the completions followed
    assert {"completion_len_wrong", "strategy_direct", "strategy_worked", "strategy_checked", "strategy_none"
            } <= dyn[0].keys()
    assert sum(dyn[0][f"strategy_{k}"] for k in ("direct", "worked", "checked", "none")) == pytest.approx(1)


def test_a_short_seeded_run_raises_the_reward(setup, tmp_path):
    recs = _run_api(setup, tmp_path, 24, lr=3e-3, prompts_per_step=4, group_size=8, max_new_tokens=4)
    rewards = [r["reward"] for r in recs]
    first, last = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    assert last > first + 0.1, rewards  # a clear trend, not an exact number


def test_the_rollout_engine_fits_every_prompt_of_a_long_problems_file(setup):
    """The engine's max_len covers the longest prompt anywhere in the problems, not only among the first few
    hundred (a mixed file's later tasks had longer prompts and stopped a run)."""
    tok, problems, ckpt = setup
    model = nanoseek.load_model(ckpt, dtype=torch.float32)
    short = generate("arithmetic", "train", 300, [1, 2, 3])
    longer = generate("word_problem", "train", 3, 3)
    cfg = GRPOConfig(steps=1, dtype="float32", eval_every=0, checkpoint_every=0, eval_problems=1, max_new_tokens=6)
    cfg.grad_accum = cfg.micro_batches(1)
    task = GRPOTask(cfg, tok, short + longer, short[:1], device=torch.device("cpu"), rewards=StartsWithDigit())
    need = max(len(task._prompt_ids(p)) for p in longer) + cfg.max_new_tokens
    assert need > max(len(task._prompt_ids(p)) for p in short[:256]) + cfg.max_new_tokens
    assert task._engine(model).max_len >= need


# ---- the command ------------------------------------------------------------------------------------------------
def test_r1_zero_from_a_base_model_asks_and_scores_in_the_pretraining_text_format(setup, tmp_path, capsys):
    """--prompt-style plain: the bare prompt line after <|bos|>, answers read from the "Answer:" line, the strategy
    from the lines before it; the completion stops where a pretraining document would."""
    tok, problems, ckpt = setup
    out = tmp_path / "zero"
    assert cli(_rl_args(ckpt, out, "--steps", "2", "--eval-every", "2", "--prompt-style", "plain",
                        "--max-new-tokens", "12")) == 0
    train_recs = [r for r in read_log(out) if r["event"] == "train"]
    assert all({"reward_accuracy", "reward_format", "strategy_none"} <= r.keys() for r in train_recs)
    cfg = GRPOConfig(prompt_style="plain", prompts_per_step=2, group_size=2, batch_size=4)
    cfg.grad_accum = cfg.micro_batches(1)
    task = GRPOTask(cfg, tok, problems, problems[:2], device=torch.device("cpu"))
    ids = task._prompt_ids(problems[0])
    assert ids[0] == tok.bos_id and tok.decode(ids[1:]) == problems[0].prompt + "\n"
    p = problems[0]
    right = f"{p.meta['terms'][0]}{p.meta['ops'][0]}{p.meta['terms'][1]}={p.answer}\nAnswer: {p.answer}"
    assert task.rewards.scores("", right, p) == {"accuracy": 1.0, "format": 1.0, "reward": 1.1}
    assert task.rewards.scores("", f"Answer: {p.answer}", p)["format"] == 0.0  # no reasoning before it
    assert task.rewards.scores("", f"<think>x</think>{p.answer}", p)["accuracy"] == 0.0  # not this format
    with pytest.raises(SystemExit):
        cli(_rl_args(ckpt, tmp_path / "bad", "--prompt-style", "json"))


def _rl_args(ckpt, out, *extra):
    return ["rl", "--checkpoint", str(ckpt), "--out", str(out), "--task", "arithmetic", "--difficulty", "1",
            "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6", "--batch-size", "4",
            "--dtype", "float32", "--eval-problems", "4", "--peak-flops", "1e12", *extra]


def test_rl_command_logs_rewards_and_refuses_bad_input(setup, tmp_path, capsys):
    _, _, ckpt = setup
    out = tmp_path / "rl"
    assert cli(_rl_args(ckpt, out, "--steps", "2", "--eval-every", "2", "--beta", "0.05")) == 0
    recs = read_log(out)
    train_recs = [r for r in recs if r["event"] == "train"]
    assert len(train_recs) == 2 and all("kl" in r and r["kl"] >= 0 for r in train_recs)
    assert [r for r in recs if r["event"] == "eval"][0]["val_accuracy"] >= 0
    assert (out / "checkpoints" / "step_0000002" / "tokenizer.json").is_file()
    capsys.readouterr()
    for bad, msg in ((["--group-size", "1"], "--group-size"), (["--task", "nope"], "unknown task"),
                     (["--steps", "3", "--updates-per-generation", "2"], "multiple of --updates-per-generation"),
                     (["--reward", "accuracy=x"], "weight must be a number"),
                     (["--dynamic-sampling", "-1"], "--dynamic-sampling must be >= 0"), (["--temperature", "0"], "--temperature"),
                     # values that overflow float32 or divide 0 by 0 (issue 22.2, 22.4)
                     (["--temperature", "1e-300"], "--temperature must be at least 1e-05"),
                     (["--temperature", "inf"], "--temperature must be a finite number"),
                     (["--lr", "inf"], "--lr must be a finite number"), (["--beta", "nan"], "--beta"),
                     (["--adam-eps", "0"], "--adam-eps must be positive"), (["--clip-eps-high", "inf"], "finite"),
                     # training flags rl has no use for are refused, not ignored (issue 22, small things)
                     (["--seq-len", "64"], "--seq-len does not apply to rl"),
                     (["--grad-accum", "2"], "--grad-accum does not apply to rl"),
                     (["--mtp-weight", "0.1"], "--mtp-weight does not apply to rl"),
                     (["--eval-batches", "3"], "--eval-batches does not apply to rl")):
        cli_error(capsys, _rl_args(ckpt, tmp_path / "bad", *bad), msg)


@pytest.fixture(scope="module")
def mtp_ckpt(setup, tmp_path_factory):
    """The same start with one MTP module: GRPO gives it no gradients, so its optimizer keeps no state for it."""
    tok, _, _ = setup
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("tiny", vocab_size=tok.vocab_size))
    assert len(model.mtp) == 1
    ckpt = tmp_path_factory.mktemp("rl_mtp") / "start"
    nanoseek.save_model(model, ckpt)
    write_tokenizer_files(tok, ckpt)
    return ckpt


@pytest.mark.slow
def test_rl_resume_after_sigkill_during_a_checkpoint_write_is_bit_for_bit(mtp_ckpt, tmp_path):
    """Killed while writing its second checkpoint (the files in the temporary folder, not yet in place), the run
    resumes from the first and ends exactly where the uninterrupted one does: logs, weights, optimizer state."""
    steps = 12
    args = lambda out, *x: nanoseek_cmd(*_rl_args(mtp_ckpt, out, "--steps", str(steps), "--checkpoint-every", "4",
                                                  "--eval-every", "6", "--lr", "1e-3", *x))  # noqa: E731

    def killed_in_the_write(out):
        assert list((out / "checkpoints").glob(".step_0000008.*.tmp"))  # it died inside the write
        assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000004"
        assert train_records(out)[-1]["step"] == 8

    full, _, stdout = assert_resumes_bit_for_bit(
        args, tmp_path, steps, dying_in_checkpoint(tmp_path, 8),
        train_keys=("loss", "grad_norm", "reward", "completion_len", "clip_fraction", "entropy"),
        eval_keys=("val_accuracy",), files=("model.safetensors", "train_state/optimizer.safetensors"),
        check_killed=killed_in_the_write)
    assert "resumed from step_0000004" in stdout
    last = full / f"checkpoints/step_{steps:07d}"
    assert not any(k.startswith("mtp.") for k in load_file(str(last / "train_state/optimizer.safetensors")))


def test_a_copied_rl_run_resumes_and_other_problems_are_refused(mtp_ckpt, tmp_path, capsys):
    """The resume compares the problems themselves, not the path of their file: a run folder copied elsewhere
    (its problems file with it) continues; a file with other problems is refused; a built-in task's run resumes
    with more steps."""
    from nanoseek.data.tasks import write_problems

    def rl(run_dir, problems, *extra):
        return cli(_rl_args(mtp_ckpt, run_dir / "rl", "--problems", str(problems), "--checkpoint-every", "2",
                            "--eval-every", "2", *extra))

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    write_problems(generate("arithmetic", "train", 16, 1), a / "rl.jsonl")
    assert rl(a, a / "rl.jsonl", "--steps", "2") == 0
    shutil.copytree(a, b)
    shutil.rmtree(a)
    capsys.readouterr()
    assert rl(b, b / "rl.jsonl", "--steps", "4", "--resume") == 0
    assert "resumed from step_0000002" in capsys.readouterr().out
    assert [x["step"] for x in train_records(b / "rl")] == [1, 2, 3, 4]
    write_problems(generate("arithmetic", "train", 16, 1, seed=7), b / "other.jsonl")
    cli_error(capsys, _rl_args(mtp_ckpt, b / "rl", "--problems", str(b / "other.jsonl"), "--checkpoint-every", "2",
                               "--eval-every", "2", "--steps", "6", "--resume"), "other problems")
    # a built-in task's problems follow from the settings: a resume may ask for more steps (a larger pool)
    c = tmp_path / "c" / "rl"
    assert cli(_rl_args(mtp_ckpt, c, "--steps", "2", "--checkpoint-every", "2", "--eval-every", "2")) == 0
    assert cli(_rl_args(mtp_ckpt, c, "--steps", "4", "--checkpoint-every", "2", "--eval-every", "2", "--resume")) == 0
    assert [x["step"] for x in train_records(c)] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_ranks_generate_their_share_and_match_one_process(setup, tmp_path, parallel):
    """Each rank samples its share of the prompts (FSDP gathers the sharded weights for it); rollouts are seeded
    by their place in the whole batch, so two processes sample exactly what one does, and the losses agree to
    summation order (fp32)."""
    import sys

    _, _, ckpt = setup
    args = lambda out, *x: _rl_args(ckpt, out, "--steps", "3", "--reward", "random", "--lr", "3e-3",  # noqa: E731
                                    "--prompts-per-step", "4", "--eval-every", "3", *x)
    one, two = tmp_path / "one", tmp_path / parallel
    r = run(nanoseek_cmd(*args(one)))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
             "nanoseek.cli", *args(two, "--parallel", parallel)])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = train_records(one), train_records(two)
    assert [x["reward"] for x in a] == [x["reward"] for x in b]  # the very same completions and rewards
    assert [x["completion_len"] for x in a] == [x["completion_len"] for x in b]
    assert any(x["loss"] != 0 for x in a)
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-6)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-3)
