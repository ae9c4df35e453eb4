"""How balanced the routed experts were over a training run, from its log's per-step `expert_load` records.

MaxVio (Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing") of one MoE layer is max load / mean load - 1:
0 is perfect balance, 1 means the busiest expert carries twice its fair share. One step's batch holds only a few
documents, and their content alone moves a 16-expert load by more than the balancing can (or should) correct,
so MaxVio is measured on loads summed over `window` consecutive steps. A *starved* cell is one (step, layer,
expert) whose load that step was under a quarter of the fair share.

    from nanoseek.train.log import read_log
    summary = expert_balance(read_log("run/pretrain"))
    summary["p95_after"], summary["starved_share"], summary["balanced_by_step"]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from nanoseek.model.moe import STARVED

WINDOW = 10  # steps whose loads are summed for one MaxVio value
TARGET = 0.5  # the MaxVio a balanced layer stays under
SETTLE = 0.1  # the share of the run balancing may take to reach TARGET


def load_matrix(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps [S], loads [S, layers, experts]) from the training records that carry `expert_load`; None when
    none do (a dense model, or a log of a bigger model that stores loads only now and then)."""
    rows = [(r["step"], r["expert_load"]) for r in records
            if r.get("event") == "train" and isinstance(r.get("expert_load"), list) and r["expert_load"]]
    if not rows:
        return None
    try:
        loads = np.array([load for _, load in rows], dtype=np.float64)
        steps = np.array([int(s) for s, _ in rows])
    except (TypeError, ValueError):
        return None  # ragged or non-numeric: not a log nanoseek wrote
    if loads.ndim != 3:
        return None
    return steps, loads


def _tokens_per_step(records: Sequence[dict]) -> float | None:
    """Tokens trained per step, from the log's running `tokens` count (None where the log has none). A window
    of a few short GRPO steps holds far fewer tokens than one of pretraining, so its MaxVio is noisier."""
    rows = [(r["step"], r["tokens"]) for r in records if r.get("event") == "train"
            and isinstance(r.get("tokens"), (int, float)) and isinstance(r.get("step"), int)]
    if len(rows) < 2 or rows[-1][0] <= rows[0][0]:
        return None
    return (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0])


def windowed_maxvio(loads: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """MaxVio [S - window + 1, layers] of the loads summed over each run of `window` consecutive steps
    (loads [S, layers, experts], each step's shares or counts)."""
    if len(loads) < window:
        window = len(loads)
    c = np.cumsum(loads, axis=0)
    summed = c[window - 1:] - np.concatenate([np.zeros_like(c[:1]), c[:-window]])
    mean = summed.mean(axis=2)
    return summed.max(axis=2) / np.maximum(mean, 1e-12) - 1.0


def expert_balance(records: Sequence[dict], window: int = WINDOW) -> dict[str, Any] | None:
    """What a report says of a run's expert balance, or None without loads in the log.

    steps: the last step of each window; maxvio: [windows][layers]; starved_share: share of (step, layer,
    expert) cells under STARVED of the fair share; window_tokens: the tokens a window holds (None if the log
    does not count them); settle_step: SETTLE of the run's steps; at_settle: the worst
    layer's MaxVio in the window ending at settle_step; p95_after: per layer, the 95th percentile of MaxVio
    over the windows after settle_step; balanced_by_step: the first step from which every later window of
    every layer stays at or under TARGET (None if never)."""
    found = load_matrix(records)
    if found is None:
        return None
    steps, loads = found
    window = max(1, min(window, len(loads)))
    mv = windowed_maxvio(loads, window)
    ends = steps[window - 1:]
    fair = loads.mean(axis=2, keepdims=True)
    starved = float((loads < STARVED * fair).mean())
    settle = int(steps[0] + SETTLE * (steps[-1] - steps[0] + 1))
    at = np.searchsorted(ends, settle, side="right") - 1
    after = mv[ends > settle] if (ends > settle).any() else mv[-1:]
    worst = mv.max(axis=1)
    over = np.nonzero(worst > TARGET)[0]
    balanced_by = None if len(over) and over[-1] == len(worst) - 1 else \
        int(ends[over[-1] + 1]) if len(over) else int(ends[0])
    per_step = _tokens_per_step(records)
    return {"window": window, "window_tokens": None if per_step is None else round(per_step * window),
            "steps": ends.tolist(), "maxvio": mv.round(4).tolist(), "starved_share": starved,
            "settle_step": settle, "at_settle": float(worst[at]) if at >= 0 else None,
            "p95_after": np.percentile(after, 95, axis=0).round(4).tolist(), "balanced_by_step": balanced_by,
            "layers": int(loads.shape[1])}
