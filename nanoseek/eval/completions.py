"""Completions made elsewhere (another engine, an API, an earlier run), scored against their problems: what
`nanoseek tasks check` prints.

    rows, scored, with_think = score_completions(problems, tasks.read_jsonl("outs.jsonl"), Rewards("accuracy"))

A completion is matched to its problem by the prompt; several completions of one prompt are several samples of
it (pass@k, maj@k).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

from nanoseek.data import tasks
from nanoseek.errors import DataError
from nanoseek.eval import metrics
from nanoseek.train import rewards


def completion_text(record: dict[str, Any], where: str) -> str:
    """The completion of a record: "completion" or "text" (raw, special tokens kept), or OpenAI-style
    "content" with "reasoning_content" / "reasoning" put back between <think> tags."""
    for field in ("completion", "text"):
        if isinstance(record.get(field), str):
            return record[field]
    if isinstance(record.get("content"), str):
        reasoning = record.get("reasoning_content", record.get("reasoning"))
        return record["content"] if reasoning is None else f"<think>{reasoning}</think>{record['content']}"
    raise DataError(f'{where}: no completion: expected "completion", "text" or "content"')


def score_completions(problems: Sequence[tasks.Problem], records: Iterable[tuple[str, Any]],
                      scorer: rewards.Rewards, ks: Sequence[int] = (1,)
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(table rows: accuracy, pass@k, maj@k and each reward per task, and "all" over several tasks; every
    completion with its answer, correctness and rewards; how many completions hold </think>).

    records: (where, record) pairs as `tasks.read_jsonl` yields them. DataError naming the line for a record
    without a prompt or a completion, or with a prompt none of the problems has."""
    by_prompt: dict[str, tasks.Problem] = {}
    for p in problems:
        by_prompt.setdefault(p.prompt, p)
    samples: dict[str, list] = defaultdict(list)
    scored, with_think = [], 0
    for where, rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            raise DataError(f'{where}: expected an object with "prompt" and the completion')
        problem = by_prompt.get(rec["prompt"])
        if problem is None:
            raise DataError(f"{where}: its prompt is not one of the problems: {rec['prompt'][:80]!r}")
        text = completion_text(rec, where)
        with_think += "</think>" in text
        answer = rewards.extract_answer(text, rec["prompt"])
        s = scorer.scores(problem.prompt, text, problem)
        correct = tasks.check_answer(problem, answer)
        samples[problem.id].append((problem, metrics.Sample(correct, tasks.answer_key(problem, answer)), s))
        scored.append({"id": problem.id, "task": problem.task, "prompt": problem.prompt, "completion": text,
                       "answer": answer, "correct": correct, **s})
    ks = sorted(set(ks))
    groups: dict[str, list] = defaultdict(list)
    for lst in samples.values():
        groups[lst[0][0].task].append(lst)
    rows = []
    for label, lsts in [*sorted(groups.items()), *([("all", list(samples.values()))] if len(groups) > 1 else [])]:
        row = {"task": label, **metrics.summarize([[x[1] for x in lst] for lst in lsts], ks)}
        n = sum(len(lst) for lst in lsts)
        for name in [*scorer.weights, "reward"]:  # the accuracy reward is the accuracy column already
            row[name] = row[name] if name in row else sum(x[2][name] for lst in lsts for x in lst) / n
        rows.append(row)
    return rows, scored, with_think
