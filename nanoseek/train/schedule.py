"""Learning-rate schedules as pure functions of the optimizer step (nothing to save: resume needs only the step).

* wsd (warmup-stable-decay): linear warm-up, constant, then a linear decay to min_lr over the last
  `decay_frac` of the steps. The constant phase is what lets a run be extended or branched (DeepSeek-V3
  holds its peak LR for most of pretraining, docs/architecture.md §7.2; nanochat decays linearly at the end).
* cosine: linear warm-up, then half a cosine from the peak down to min_lr at the last step.
* constant: linear warm-up, then the peak.
"""

from __future__ import annotations

import math

SCHEDULES = ("wsd", "cosine", "constant")


def lr_at(step: int, *, total: int, peak: float, warmup: int = 0, schedule: str = "wsd", min_ratio: float = 0.1,
          decay_frac: float = 0.2) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`.

    Warm-up ramps (step + 1) / warmup so the first step already moves; the last step (total - 1) of the
    decaying schedules runs at exactly peak * min_ratio. When warm-up and decay overlap (very short runs)
    the smaller factor wins.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if total < 1 or not 0 <= step < total:
        raise ValueError(f"step {step} is outside the run's {total} steps")
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return peak * warm
    if schedule == "wsd":
        n_decay = max(1, round(decay_frac * total)) if decay_frac > 0 else 0
        start = total - n_decay
        if n_decay == 0 or step < start:
            decay = 1.0
        else:  # linear from 1 (just before the decay) to min_ratio at the last step
            progress = (step - start + 1) / n_decay
            decay = 1.0 - (1.0 - min_ratio) * progress
        return peak * min(warm, decay)
    # cosine over the steps after warm-up
    span = total - warmup
    if step < warmup or span <= 0:
        return peak * warm
    progress = (step - warmup + 1) / span
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
