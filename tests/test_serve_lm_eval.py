"""lm-evaluation-harness against the server through its `local-completions` model: one loglikelihood task
(multiple choice) and one generate-until task, both defined here as task YAML over a small local JSONL file
(no hub access). Its loglikelihoods equal the engine's own scores for the same strings (within 1e-4 in fp32)
and its generations equal the engine's greedy output."""

import json

import pytest

from nanoseek.engine import Engine, SamplingParams
from serve_helpers import random_checkpoint, running

pytestmark = pytest.mark.slow  # lm-eval's import and set-up take a few seconds

DOCS = [
    {"question": "What jumps over the lazy dog?", "choices": ["the quick brown fox", "another line"], "answer": 0},
    {"question": "Say hello", "choices": ["Héllo wörld", "text"], "answer": 1},
    {"question": "中文?", "choices": ["🙂", "no"], "answer": 0},
]
PROMPT = "Question: {{question}}\\nAnswer:"


def _tasks(folder, data) -> None:
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
              f'doc_to_text: "{PROMPT}"\n')
    (folder / "ll.yaml").write_text(
        "task: nanoseek_ll\n" + common + 'output_type: multiple_choice\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "gen.yaml").write_text(
        "task: nanoseek_gen\n" + common + 'output_type: generate_until\ndoc_to_target: "{{choices[answer]}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")


def test_lm_eval_local_completions_scores_equal_the_engine(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS))
    _tasks(tmp_path, data)
    ckpt = random_checkpoint()
    engine = Engine.load(ckpt)
    with running(engine) as server:
        out = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=f"base_url={server.url}/v1/completions,tokenizer_backend=huggingface,tokenizer={ckpt},"
                       "model=tiny,num_concurrent=2,max_retries=1,tokenized_requests=True",
            tasks=["nanoseek_ll", "nanoseek_gen"], task_manager=TaskManager(include_path=str(tmp_path)),
            log_samples=True)
    assert out["results"]["nanoseek_ll"]["sample_len"] == 3 and "acc,none" in out["results"]["nanoseek_ll"]

    alone = Engine.load(ckpt)  # the engine's own scores, no server in between
    tok = alone.tokenizer
    n_ll = 0
    for sample in out["samples"]["nanoseek_ll"]:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            (ll, greedy), = resp
            ctx = tok.encode(context)
            whole = tok.encode(context + continuation)  # lm-eval encodes the pair whole, then splits
            assert whole[:len(ctx)] == ctx
            o = alone.generate(whole, SamplingParams(max_new_tokens=1, temperature=0, prompt_logprobs=1))
            scored = o.prompt_logprobs[len(ctx):]
            assert ll == pytest.approx(sum(lp.logprob for lp in scored), abs=1e-4)
            assert greedy == all(lp.logprob >= lp.top[0][1] for lp in scored)
            n_ll += 1
    assert n_ll == 6
    for sample in out["samples"]["nanoseek_gen"]:
        (context, kwargs), = sample["arguments"]
        o = alone.generate(tok.encode(context), SamplingParams(max_new_tokens=8, temperature=0, stop=["\n"]))
        assert sample["resps"] == [[o.text]]
