"""Task accuracy from sampled answers: pass@k, maj@k, accuracy, and their tables. Pure functions.

For each problem we draw n samples; each sample is right or wrong and has a vote key (its final answer in a
canonical form: `nanoseek.data.tasks.answer_key`), or None when no answer could be read.

pass@k   the chance that at least one of k samples is right, estimated without bias from n >= k samples of
         which c are right (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1):
         1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i) so no huge binomials appear.
maj@k    majority vote over the first k samples' keys (samples without an answer do not vote); a tie goes
         to the answer that appeared first. Right when the winning answer is right.
accuracy the fraction of samples that are right (the mean of pass@1 estimates).
Each is averaged over problems, every problem weighing the same. accuracy_se is the standard error of that
mean over problems (sample standard deviation / sqrt(problems)): what separates a real change from noise
(about 1.4 points at 30% on 1,000 problems, 2.9 on 250).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Sample:
    """One sampled answer to a problem: whether it is right, and its vote key (None: no answer)."""

    correct: bool
    key: str | None = None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c right: 1 - C(n-c, k) / C(n, k)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a right sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(keys: Sequence[str | None]) -> tuple[str | None, int | None]:
    """(winning key, index of its first sample); (None, None) when no sample has an answer."""
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, None
    best = max(counts.values())
    for i, k in enumerate(keys):  # first-seen order breaks ties deterministically
        if k is not None and counts[k] == best:
            return k, i
    raise AssertionError("unreachable")


def maj_at_k(samples: Sequence[Sample], k: int) -> bool:
    """Whether the majority answer among the first k samples is right (False when none has an answer)."""
    if not 1 <= k <= len(samples):
        raise ValueError(f"maj@k needs 1 <= k <= {len(samples)} samples, got k={k}")
    _, i = majority_vote([s.key for s in samples[:k]])
    return i is not None and samples[i].correct


def problem_metrics(samples: Sequence[Sample], ks: Iterable[int] = (1,)) -> dict[str, float]:
    """accuracy, pass@k and maj@k of one problem, for each k in ks that is at most its sample count."""
    n = len(samples)
    if n == 0:
        raise ValueError("a problem needs at least one sample")
    c = sum(bool(s.correct) for s in samples)
    out = {"accuracy": c / n}
    for k in sorted(set(ks)):
        if 1 <= k <= n:
            out[f"pass@{k}"] = pass_at_k(n, c, k)
            out[f"maj@{k}"] = float(maj_at_k(samples, k))
    return out


def aggregate(per_problem: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over the problems that have it, plus "problems", their number."""
    out: dict[str, Any] = {"problems": len(per_problem)}
    names = list(dict.fromkeys(name for m in per_problem for name in m))
    for name in names:
        values = [m[name] for m in per_problem if name in m]
        out[name] = sum(values) / len(values)
    return out


def summarize(samples_per_problem: Sequence[Sequence[Sample]], ks: Iterable[int] = (1,)) -> dict[str, float]:
    """Aggregate metrics of many problems: problems, samples (per problem, the smallest count), accuracy,
    pass@k and maj@k for each k in ks up to that count."""
    if not samples_per_problem:
        raise ValueError("no problems to summarize")
    ks = sorted(set(ks))
    n_min = min(len(s) for s in samples_per_problem)
    per_problem = [problem_metrics(s, [k for k in ks if k <= n_min]) for s in samples_per_problem]
    out = aggregate(per_problem)
    n = out.pop("problems")
    acc = [m["accuracy"] for m in per_problem]
    var = sum((a - out["accuracy"]) ** 2 for a in acc) / (n - 1) if n > 1 else 0.0
    return {"problems": n, "samples": n_min, "accuracy": out.pop("accuracy"), "accuracy_se": math.sqrt(var / n),
            **out}


# ---- tables ----------------------------------------------------------------------------------------------
def _is_rate(column: str) -> bool:
    return column.startswith(("accuracy", "pass@", "maj@")) or column.endswith(("_rate", "accuracy", "share"))


def format_value(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and _is_rate(column):
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table, one row per mapping; columns in first-seen order unless given. Rates (accuracy,
    pass@k, maj@k) print as percentages, other numbers right-aligned."""
    if columns is None:
        columns = list(dict.fromkeys(c for r in rows for c in r))
    if not columns:
        return ""
    align = ["---:" if any(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in rows)
             else "---" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(format_value(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_json(results: Any) -> str:
    """Results as indented JSON (numbers as they are, not percentages)."""
    return json.dumps(results, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
