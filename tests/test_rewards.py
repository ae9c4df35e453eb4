"""Rewards and answer extraction on hand-written right, wrong and malformed completions, and on completions
decoded from the chat template's own token ids."""

from __future__ import annotations

import pytest

from nanoseek.data import tasks
from nanoseek.train import rewards
from nanoseek.train.rewards import (Rewards, accuracy_reward, extract_answer, extract_plain_answer, format_reward,
                                   parse_weights, random_reward, split_completion)
from nanoseek.errors import DataError
from nanoseek.tokenizer import Tokenizer

SUM = tasks.Problem("arithmetic", "What is 47 + 385?", "432", {"terms": [47, 385], "ops": ["+"], "key": "47 385 +"})
CD = tasks.Problem("countdown", "Make 46 from 3, 7, 25 using + - * / (each number at most once).", "25+7*3",
                   {"numbers": [3, 7, 25], "target": 46})


@pytest.mark.parametrize("completion, answer", [
    ("<think>7+5=12</think>432", "432"),
    ("<think>7+5=12</think> 432 <|end|>", "432"),
    ("<think>x</think>432<|end|><|eos|>", "432"),
    ("<think>x</think>\n<answer>\n432\n</answer>\n", "432"),
    ("<think>x</think>so <answer>12</answer> no, <answer>432</answer>", "432"),  # the last answer tag
    ("<think>a</think>1<think>b</think>432", "432"),                              # after the last </think>
    ("432", "432"),                                                               # answered directly
    ("  432  ", "432"),
    ("<think>7+5=12, still thinking", None),                                      # never finished
    ("<think>x</think>", None), ("<think>x</think>   <|end|>", None),             # empty answer
    ("<think>x</think><answer>432", None),                                        # answer tag left open
    ("<think>x</think></answer>432<answer>", None),
    ("", None),
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def test_a_prefilled_think_in_the_prompt_counts_as_the_completions_own():
    prompt = "<|user|>What is 47 + 385?<|end|><|assistant|><think>"
    assert extract_answer("7+5=12</think>432", prompt) == "432"
    assert split_completion("7+5=12</think>432", prompt) == ("7+5=12", "432")
    assert format_reward(prompt, "7+5=12</think>432") == 1.0
    assert format_reward("What is 47 + 385?", "7+5=12</think>432") == 0.0


@pytest.mark.parametrize("completion, good", [
    ("<think>7+5=12</think>432", True),
    ("\n<think>\n7+5=12\n</think>\n432\n<|end|>", True),
    ("<think>r</think><answer>432</answer>", True),
    ("<think>r</think> <answer> wrong but well formed </answer> ", True),
    ("<think>r</think>433", True),                       # format ignores correctness
    ("432", False),                                      # no reasoning block
    ("<think>r432", False),                              # unclosed
    ("r</think>432", False),                             # no opening tag
    ("Sure! <think>r</think>432", False),                # text before <think>
    ("<think>   </think>432", False),                    # empty reasoning
    ("<think>r</think>", False), ("<think>r</think>  \n", False),        # empty answer
    ("<think>a</think>b<think>c</think>432", False),     # two blocks
    ("<think><think>r</think>432", False),
    ("<think>r</think><answer></answer>", False),        # empty answer tag
    ("<think>r</think><answer>4</answer>32", False),     # text after the answer tag
    ("<think>r</think><answer><answer>4</answer></answer>", False),
    ("<think>r</think><answer>432", False),
])
def test_format_reward(completion, good):
    assert format_reward("What is 47 + 385?", completion) == (1.0 if good else 0.0)


@pytest.mark.parametrize("completion, right", [
    ("<think>7+5=12, write 2, carry 1</think>432", True),
    ("<think>x</think><answer>432</answer><|end|>", True),
    ("<think>x</think>1,432", False), ("<think>x</think>432 or 433", False), ("<think>x</think>433", False),
    ("<think>432</think>", False),                       # the right number only inside the reasoning
    ("<think>432", False), ("", False),
])
def test_accuracy_reward_arithmetic(completion, right):
    assert accuracy_reward(SUM.prompt, completion, SUM) == (1.0 if right else 0.0)


@pytest.mark.parametrize("answer, right", [
    ("25+7*3", True), ("7*3+25", True), ("(25+7*3)", True), ("25+7*3=46", True),
    ("25+7+7+7", False), ("25+21", False), ("25*3-7*4", False), ("46", False), ("25+7*3/0", False),
    ("25/3*3+25", False), ("25+7**3", False), ("-7+25+28", False), ("__import__('os').system('x')", False),
])
def test_accuracy_reward_countdown(answer, right):
    assert accuracy_reward(CD.prompt, f"<think>search</think>{answer}<|end|>", CD) == (1.0 if right else 0.0)


def test_references_can_be_records_or_strings():
    assert accuracy_reward("", "<think>x</think>432", tasks.problem_record(SUM)) == 1.0
    assert accuracy_reward("", "<think>x</think> Paris ", "Paris") == 1.0
    assert accuracy_reward("", "<think>x</think>paris", "Paris") == 0.0
    assert accuracy_reward("", "<think>x</think>72", {"prompt": "q", "answer": "72.0", "checker": "numeric"}) == 1.0
    with pytest.raises(DataError, match="a reward reference is"):
        accuracy_reward("", "x", 432)


def test_random_reward_is_a_deterministic_coin_that_ignores_correctness():
    prompts = [f"What is {i} + 1?" for i in range(2000)]
    values = [random_reward(p, "<think>x</think>1", None) for p in prompts]
    assert set(values) == {0.0, 1.0} and 0.45 < sum(values) / len(values) < 0.55
    assert values == [random_reward(p, "<think>x</think>1") for p in prompts]
    assert values != [random_reward(p, "<think>x</think>1", seed=1) for p in prompts]
    assert values != [random_reward(p, "<think>x</think>2") for p in prompts]
    rare = [random_reward(p, "c", p=0.1) for p in prompts]
    assert 0.07 < sum(rare) / len(rare) < 0.13
    # right and wrong answers are paid alike
    right = [random_reward(SUM.prompt, f"<think>{i}</think>432") for i in range(1000)]
    wrong = [random_reward(SUM.prompt, f"<think>{i}</think>433") for i in range(1000)]
    assert abs(sum(right) - sum(wrong)) < 100


def test_weighted_rewards():
    r = Rewards()
    assert r.weights == {"accuracy": 1.0, "format": 0.1}
    assert r.scores(SUM.prompt, "<think>x</think>432", SUM) == {"accuracy": 1.0, "format": 1.0, "reward": 1.1}
    assert r(SUM.prompt, "<think>x</think>433", SUM) == pytest.approx(0.1)
    assert r(SUM.prompt, "432", SUM) == 1.0       # right, but no reasoning block
    assert r(SUM.prompt, "<think>x", SUM) == 0.0
    control = Rewards("random", seed=3)
    s = control.scores(SUM.prompt, "<think>x</think>432", SUM)
    assert set(s) == {"random", "reward"} and s["reward"] == random_reward(SUM.prompt, "<think>x</think>432", seed=3)
    assert Rewards({"accuracy": 2, "format": -0.5})(SUM.prompt, "<think>x</think>432", SUM) == 1.5


@pytest.mark.parametrize("spec, match", [
    ("accuracy=2,format", None), ("style=1", "unknown reward 'style'"), ("accuracy=lots", "must be a number"),
    ("", "no reward named"), ("accuracy=nan", "not a finite number"), ({"accuracy": float("inf")}, "finite"),
    ("accuracy=1,format=0.1,accuracy=2", "named twice"),
])
def test_parse_weights(spec, match):
    if match is None:
        assert parse_weights(spec) == {"accuracy": 2.0, "format": 1.0}
    else:
        with pytest.raises(DataError, match=match):
            parse_weights(spec)


def test_extract_plain_answer():
    assert extract_plain_answer("4+8=12\n12+2=14\nAnswer: 14\nWhat is 1+1?\n2\nAnswer: 2") == "14"
    assert extract_plain_answer("4+8=12\nthe Answer: 14") is None
    assert extract_plain_answer("Answer:  \n") is None


def test_rewards_read_completions_decoded_from_the_chat_templates_ids():
    """What the engine returns with special tokens kept: the ids of <think>...</think>ANSWER<|end|> decoded."""
    problems = [p for name in tasks.generated_tasks() for p in tasks.generate(name, "test", 5, "1-2", seed=4)]
    tok = Tokenizer.train([tasks.render_text(p) for p in problems], 500)
    for p in problems:
        messages = tasks.chat_messages(p)
        ids, mask = tok.render_chat(messages)
        prompt_ids, _ = tok.render_chat(messages[:1], add_generation_prompt=True)
        assert ids[:len(prompt_ids)] == prompt_ids
        completion = tok.decode(ids[len(prompt_ids):])
        prompt = tok.decode(prompt_ids)
        assert completion.endswith("<|end|>")
        assert format_reward(prompt, completion) == 1.0
        assert accuracy_reward(prompt, completion, p) == 1.0
        assert rewards.extract_answer(completion) == tasks.worked_solution(p).answer
        # with the special tokens skipped, reasoning and answer run together: no credit
        assert format_reward(prompt, tok.decode(ids[len(prompt_ids):], skip_special_tokens=True)) == 0.0
