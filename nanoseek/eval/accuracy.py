"""Task accuracy of a model: sample answers to problems through the engine, check them, and report accuracy,
pass@k and maj@k (nanoseek.eval.metrics) per task.

    from nanoseek.engine import Engine
    from nanoseek.data import tasks
    from nanoseek.eval import evaluate_tasks, results_markdown
    engine = Engine.load("run/sft")
    problems = tasks.generate("countdown", "test", 200, difficulty="1-3")
    results = evaluate_tasks(engine, problems, samples=8, k=(1, 4, 8), temperature=1.0, max_new_tokens=256)
    results["summary"]["pass@1"], results["summary"]["maj@8"]
    print(results_markdown(results))

Every problem is asked as the chat prompt of `nanoseek.data.tasks.chat_messages(problem, with_solution=False)`
and its samples are decoded with special tokens kept, so <think>...</think> stay visible to the answer
extraction (`nanoseek.train.rewards.extract_answer`). There is one generation path: the requests go through
the engine's scheduler, all samples of a chunk of problems at once (samples of a prompt share its cached
prefix). Sample j of problem i is seeded from (seed, i, j), so a result does not depend on the batch size.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

from nanoseek.data.tasks import PROMPT_STYLES, Problem, chat_messages, earlier_problems, earlier_turns, prompt_ids
from nanoseek.data.tasks.strategies import STRATEGIES
from nanoseek.engine import SamplingParams
from nanoseek.eval.metrics import Sample, markdown_table, summarize
from nanoseek.train.rewards import score

FORMAT_VERSION = 1


def sample_seed(seed: int, problem: int, sample: int) -> int:
    """The seed of sample `sample` of problem number `problem` (63 bits)."""
    h = hashlib.blake2b(f"nanoseek-eval|{seed}|{problem}|{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


STYLES = PROMPT_STYLES
_STRATEGY_ORDER = (*STRATEGIES, "none")


def evaluate_tasks(engine, problems: Sequence[Problem], *, samples: int = 1, k: Iterable[int] = (1,),
                   temperature: float | None = None, top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0,
                   keep_completions: bool = False, chunk: int | None = None, style: str = "chat",
                   after_turns: int = 0, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Sample `samples` answers per problem with `engine` and score them.

    temperature: default 0 (greedy) for one sample, 1.0 for several. k: the k of pass@k and maj@k (each at most
    `samples`). chunk: problems per engine call (default: enough for 4 x the engine's batch). progress(done,
    total) is called after each chunk. The engine reads its model's live weights (generate refreshes them), so
    a trainer may call this between optimizer steps. style: "chat" asks in the chat template (a model after
    SFT or RL); "plain" gives the bare prompt line and reads the "Answer:" line of the continuation, the
    format of the tasks' pretraining text (a model after pretraining alone). after_turns (chat only): ask each
    problem after that many other problems of the set, answered, as a user goes on in one conversation.

    Returns {"summary": the row of all problems, "rows": one row per task (+ "all" when several), "by_difficulty":
    rows per task and level (where a task has several levels), "settings", "tokens": {"prompt", "generated"},
    "seconds", and with keep_completions "problems": per problem its samples (completion, answer, correct,
    format, finish_reason, tokens, strategy)}. A row holds problems, samples, accuracy, pass@k and maj@k, format_rate
    (well formed samples), truncated_rate (samples cut by max_new_tokens) and mean_tokens. "by_strategy" has a row
    per solution strategy the samples followed (direct, worked, checked, none: nanoseek.data.tasks.strategies)
    with its share of the samples and its accuracy.
    """
    problems = list(problems)
    if not problems:
        raise ValueError("no problems to evaluate")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    ks = sorted(set(int(x) for x in k))
    if not ks or ks[0] < 1 or ks[-1] > samples:
        raise ValueError(f"every k must be in 1..samples ({samples}), got {ks}")
    if temperature is None:
        temperature = 0.0 if samples == 1 else 1.0
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if after_turns and style != "chat":
        raise ValueError("after_turns asks in a conversation: it needs the chat style")
    if style == "chat":
        prompts = [engine.encode_chat(earlier_turns(earlier_problems(problems, i, after_turns))
                                      + chat_messages(p, with_solution=False)) for i, p in enumerate(problems)]
        bos = None
    else:  # a document starts with <|bos|>, as the pretraining shards do
        prompts = [prompt_ids(p, engine.tokenizer, style) for p in problems]
        bos = getattr(engine.tokenizer, "bos_id", None)
    if chunk is None:
        chunk = max(1, 4 * getattr(getattr(engine, "scheduler", None), "max_batch", 32) // samples)
    t0 = time.perf_counter()
    scored: list[list[dict[str, Any]]] = []
    n_prompt = n_gen = 0
    for start in range(0, len(problems), chunk):
        idx = range(start, min(start + chunk, len(problems)))
        ids = [prompts[i] for i in idx for _ in range(samples)]
        # plain text: one problem per document, so the next document's <|bos|> ends the answer (and a blank
        # line, where documents hold several problems)
        stop = ["\n\n"] if style == "plain" else []
        stop_ids = [bos] if style == "plain" and bos is not None else []
        params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 seed=sample_seed(seed, i, j), skip_special_tokens=False, stop=stop,
                                 stop_token_ids=stop_ids)
                  for i in idx for j in range(samples)]
        outs = engine.generate(ids, params)
        for n, i in enumerate(idx):
            rows = []
            for o in outs[n * samples:(n + 1) * samples]:
                rows.append({"completion": o.text, **score(problems[i], o.text, style), "finish_reason": o.finish_reason,
                             "tokens": len(o.token_ids)})
                n_prompt += len(o.prompt_ids)
                n_gen += len(o.token_ids)
            scored.append(rows)
        if progress is not None:
            progress(len(scored), len(problems))
    seconds = time.perf_counter() - t0

    def row(label: dict[str, Any], which: list[int]) -> dict[str, Any]:
        sam = [[Sample(s["correct"], s["key"]) for s in scored[i]] for i in which]
        flat = [s for i in which for s in scored[i]]
        return {**label, **summarize(sam, ks),
                "format_rate": sum(s["format"] for s in flat) / len(flat),
                "truncated_rate": sum(s["finish_reason"] == "length" for s in flat) / len(flat),
                "mean_tokens": sum(s["tokens"] for s in flat) / len(flat)}

    by_task: dict[str, list[int]] = defaultdict(list)
    by_level: dict[tuple[str, Any], list[int]] = defaultdict(list)
    for i, p in enumerate(problems):
        by_task[p.task].append(i)
        by_level[(p.task, p.difficulty)].append(i)
    rows = [row({"task": t}, which) for t, which in by_task.items()]
    summary = row({"task": "all"}, list(range(len(problems)))) if len(rows) > 1 else rows[0]
    if len(rows) > 1:
        rows.append(summary)
    # which strategy the answers followed, and how often each was right: what RL can select from
    by_strategy: dict[str, list[bool]] = defaultdict(list)
    for rows_ in scored:
        for s in rows_:
            by_strategy[s["strategy"] or "none"].append(s["correct"])
    n_samples = sum(map(len, by_strategy.values()))
    strategy_rows = [{"strategy": k, "samples": len(v), "share": len(v) / n_samples, "accuracy": sum(v) / len(v)}
                     for k, v in sorted(by_strategy.items(), key=lambda kv: _STRATEGY_ORDER.index(kv[0]))]
    several = {t for t in by_task if len({d for (tt, d) in by_level if tt == t}) > 1}
    by_difficulty = [row({"task": t, "difficulty": d}, which) for (t, d), which in
                     sorted(by_level.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)) if t in several]
    out: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "summary": summary, "rows": rows, "by_difficulty": by_difficulty,
        "by_strategy": strategy_rows,
        "settings": {"samples": samples, "k": ks, "temperature": temperature, "top_p": top_p,
                     "max_new_tokens": max_new_tokens, "seed": seed, "style": style, "after_turns": after_turns},
        "tokens": {"prompt": n_prompt, "generated": n_gen}, "seconds": seconds}
    if keep_completions:
        out["problems"] = [{"id": p.id, "task": p.task, "difficulty": p.difficulty, "prompt": p.prompt,
                            "reference": p.answer, "samples": [{k_: v for k_, v in s.items() if k_ != "key"}
                                                               for s in scored[i]]}
                           for i, p in enumerate(problems)]
    return out


def completion_records(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per sample (from keep_completions results), in the shape `nanoseek tasks check` reads back:
    prompt and completion, plus the problem id, task, reference, sample index and the scores."""
    out = []
    for p in results.get("problems", []):
        for j, s in enumerate(p["samples"]):
            out.append({"id": p["id"], "task": p["task"], "difficulty": p["difficulty"], "prompt": p["prompt"],
                        "reference": p["reference"], "sample": j, **s})
    return out


def results_markdown(results: dict[str, Any], bpb: dict[str, Any] | None = None) -> str:
    """The report as markdown: bits per byte (when given), the per-task table, the per-level table."""
    parts = []
    if bpb:
        parts.append(f"validation: {bpb['val_bpb']:.4f} bits per byte, loss {bpb['val_loss']:.4f} nats per token "
                     f"({bpb['tokens']:,} tokens)\n")
    if results:
        s = results["settings"]
        parts.append(f"{s['samples']} sample(s) per problem, temperature {s['temperature']:g}, top-p {s['top_p']:g}, "
                     f"at most {s['max_new_tokens']} new tokens, seed {s['seed']}\n")
        parts.append(markdown_table(results["rows"]))
        if results.get("by_difficulty"):
            parts.append(markdown_table(results["by_difficulty"]))
        if results.get("by_strategy"):
            parts.append(markdown_table(results["by_strategy"]))
    return "\n".join(parts)
