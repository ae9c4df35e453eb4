"""The report card's plots, drawn from training log records (nanoseek.train.log) with matplotlib.

    loss_curves({"pretrain": records, "sft": records}) -> PNG bytes | None   train and validation loss
    grpo_rewards(records) -> PNG bytes | None        reward, its parts, validation accuracy over GRPO steps
    grpo_lengths(records) -> PNG bytes | None        mean and longest completion, right and wrong ones, truncated share
    grpo_strategies(records) -> PNG bytes | None     the share of each solution strategy over GRPO steps
    expert_load(records, layer_names, title) -> PNG bytes | None   experts x steps heat map per MoE layer

Each function returns the PNG's bytes (None when the records hold nothing to draw), so the caller decides
where it goes and writes it atomically. Figures are built with `matplotlib.figure.Figure` and rendered by
the Agg canvas: no pyplot, so no global figure state and no display is ever needed.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nanoseek.report.balance import TARGET

DPI = 110
MAX_LAYERS = 12  # expert-load heat maps per figure
_BLUE, _ORANGE, _GREEN, _RED, _PURPLE, _GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#7f7f7f"


def num(v: Any) -> float:
    """A logged metric as a float: NaN for anything that is not a finite number (the log writes inf/nan as
    strings, and a metric may be absent)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v) if math.isfinite(v) else math.nan


def _series(records: Sequence[dict], key: str, event: str = "train") -> tuple[list[float], list[float]]:
    """(steps, values) of `key` in the records of `event`, skipping records without a finite value."""
    xs, ys = [], []
    for r in records:
        if r.get("event") == event and not math.isnan(y := num(r.get(key))) and not math.isnan(x := num(r.get("step"))):
            xs.append(x)
            ys.append(y)
    return xs, ys


def _smooth(ys: list[float], n: int) -> list[float]:
    """An exponential moving average with a span of about n points, bias-corrected at the start."""
    if n <= 1:
        return list(ys)
    alpha, avg, weight, out = 2 / (n + 1), 0.0, 0.0, []
    for y in ys:
        avg = (1 - alpha) * avg + alpha * y
        weight = (1 - alpha) * weight + alpha
        out.append(avg / weight)
    return out


def _line(ax, xs, ys, label: str, color: str, *, smooth: bool = True, **kw) -> None:
    """A metric over steps: the raw values, and for long noisy runs a smoothed line over them."""
    if smooth and len(ys) > 60:
        ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(xs, _smooth(ys, max(5, len(ys) // 30)), color=color, label=f"{label} (smoothed)", linewidth=1.8, **kw)
    else:
        ax.plot(xs, ys, color=color, label=label, linewidth=1.5, marker="o" if len(ys) <= 12 else None,
                markersize=3, **kw)


def _step_axis(ax, label: str = "optimizer step", nbins: int | str = "auto") -> None:
    """Steps are whole numbers: no 2.5 ticks on a short run."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=nbins, integer=True))
    ax.set_xlabel(label)


def _png(fig) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure(width: float, height: float):
    return Figure(figsize=(width, height), layout="constrained")


def loss_curves(stages: dict[str, Sequence[dict]]) -> bytes | None:
    """One panel per stage with training records: train loss (next-token; MTP depth 1 dashed) and validation
    loss at the evaluation steps. stages: {"pretrain": records, "sft": records}, either may be missing."""
    titles = {"pretrain": ("Pretraining", "loss (nats per token)"),
              "sft": ("SFT", "loss (nats per assistant token)")}
    panels = [(name, recs) for name, recs in stages.items()
              if recs and (_series(recs, "main_loss")[0] or _series(recs, "loss")[0])]
    if not panels:
        return None
    fig = _figure(5.5 * len(panels) + 0.5, 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, recs) in zip(axes, panels):
        title, ylabel = titles.get(name, (name, "loss (nats per token)"))
        xs, ys = _series(recs, "main_loss")
        if not xs:  # an older log: only the total
            xs, ys = _series(recs, "loss")
        _line(ax, xs, ys, "train", _BLUE)
        mx = [(num(r.get("step")), num((r.get("mtp_losses") or [None])[0]) if isinstance(r.get("mtp_losses"), list)
               else math.nan) for r in recs if r.get("event") == "train"]
        mx = [(x, y) for x, y in mx if not (math.isnan(x) or math.isnan(y))]
        if mx:
            _line(ax, [x for x, _ in mx], [y for _, y in mx], "train, MTP depth 1 (token t+2)", _GREY,
                  linestyle="--")
        vx, vy = _series(recs, "val_loss", "eval")
        if vx:
            bx, bpb = _series(recs, "val_bpb", "eval")
            label = f"validation (last {vy[-1]:.3f}" + (f"; {bpb[-1]:.3f} bits per byte)" if bpb else ")")
            ax.plot(vx, vy, color=_ORANGE, marker="o", markersize=4, linewidth=1.8, label=label)
        ax.set_title(title)
        _step_axis(ax)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Loss curves")
    return _png(fig)


def _grpo_png(fig, ax, ylabel: str, title: str) -> bytes:
    """A GRPO plot's axes labelled (steps along x), gridded, its legend right of the axes; the PNG."""
    _step_axis(ax, "GRPO step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def grpo_rewards(records: Sequence[dict]) -> bytes | None:
    """Mean reward per GRPO step (± its spread over the step's completions), each reward function's mean
    (reward_<name>), and the greedy validation accuracy at the evaluation steps."""
    xs, ys = _series(records, "reward")
    if not xs:
        return None
    fig = _figure(11, 4.6)
    ax = fig.subplots()
    _line(ax, xs, ys, "reward (weighted sum)", _BLUE)
    sx, sd = _series(records, "reward_std")
    if sx == xs and len(xs) > 1:
        ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], color=_BLUE,
                        alpha=0.12, label="reward ± std over the step's completions")
    parts = sorted({k for r in records if r.get("event") == "train" for k in r
                    if k.startswith("reward_") and k != "reward_std"})
    colors = [_GREEN, _PURPLE, _GREY, "#8c564b", "#e377c2"]
    for i, key in enumerate(parts):
        px, py = _series(records, key)
        name = key[len("reward_"):]
        label = "train accuracy (reward_accuracy)" if name == "accuracy" else f"reward_{name}"
        _line(ax, px, py, label, colors[i % len(colors)], linestyle="-" if name == "accuracy" else ":")
    vx, vy = _series(records, "val_accuracy", "eval")
    if vx:
        ax.plot(vx, vy, color=_RED, marker="s", markersize=5, linewidth=1.8,
                label=f"validation accuracy, greedy (last {100 * vy[-1]:.1f}%)")
    top = max([1.0] + ys + [y for k in parts for y in _series(records, k)[1]])
    ax.set_ylim(-0.03, top * 1.05 + 0.02)
    return _grpo_png(fig, ax, "mean per completion (accuracy: fraction right)", "GRPO: reward and accuracy")


def grpo_lengths(records: Sequence[dict], max_new_tokens: int | None = None) -> bytes | None:
    """Mean and longest completion per GRPO step in tokens, the means of right and of wrong answers (what R1's
    growing answers look like), the length limit, and the share of completions the limit cut off (right axis)."""
    xs, ys = _series(records, "completion_len")
    if not xs:
        return None
    fig = _figure(11, 4.6)
    ax = fig.subplots()
    _line(ax, xs, ys, "mean completion", _BLUE)
    mx, my = _series(records, "completion_len_max")
    if mx:
        _line(ax, mx, my, "longest completion", _ORANGE)
    for key, label, color in (("completion_len_right", "mean of right answers", _GREEN),
                              ("completion_len_wrong", "mean of wrong answers", _PURPLE)):
        kx, ky = _series(records, key)
        if kx:
            _line(ax, kx, ky, label, color, linestyle="--")
    if max_new_tokens:
        ax.axhline(max_new_tokens, color=_GREY, linestyle="--", linewidth=1,
                   label=f"limit (max_new_tokens = {max_new_tokens})")
    ax.set_ylim(0, max(ys + my + [max_new_tokens or 0]) * 1.08 + 1)
    _step_axis(ax, "GRPO step")
    ax.set_ylabel("completion length (tokens)")
    handles, labels = ax.get_legend_handles_labels()
    tx, ty = _series(records, "truncated")
    if tx and any(ty):
        ax2 = ax.twinx()
        _line(ax2, tx, ty, "truncated (right axis)", _RED, linestyle=":")
        ax2.set_ylim(-0.02, 1.05)
        ax2.set_ylabel("share of completions truncated")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.set_title("GRPO: completion length")
    ax.grid(alpha=0.3)
    # outside the axes, right of the second axis's label
    fig.legend(handles, labels, fontsize=8, loc="outside right upper")
    return _png(fig)


def grpo_paths(runs: dict[str, Sequence[dict]]) -> bytes | None:
    """GRPO runs side by side (R1, R1-Zero, the random-reward control): per run, the share of the step's
    sampled answers that are right (reward_accuracy, smoothed) and the greedy validation accuracy."""
    colors = [_BLUE, _GREEN, _GREY, _PURPLE, _ORANGE]
    fig = _figure(11, 4.6)
    ax = fig.subplots()
    drawn = False
    for (label, records), color in zip(runs.items(), colors):
        xs, ys = _series(records, "reward_accuracy")
        if xs:
            _line(ax, xs, ys, f"{label}: train accuracy", color)
            drawn = True
        vx, vy = _series(records, "val_accuracy", "eval")
        if vx:
            ax.plot(vx, vy, color=color, marker="s", markersize=5, linewidth=1.2, linestyle="--",
                    label=f"{label}: validation, greedy (last {100 * vy[-1]:.1f}%)")
            drawn = True
    if not drawn:
        return None
    ax.set_ylim(-0.03, 1.03)
    return _grpo_png(fig, ax, "fraction right", "GRPO runs side by side: accuracy")


def grpo_strategies(records: Sequence[dict]) -> bytes | None:
    """The share of each solution strategy among a GRPO step's completions (direct, worked, checked, no
    reasoning), smoothed: what RL selected."""
    names = [k for k in ("direct", "worked", "checked", "none")
             if any(num(r.get(f"strategy_{k}", 0)) > 0 for r in records if r.get("event") == "train")]
    if not names:
        return None
    fig = _figure(11, 4.6)
    ax = fig.subplots()
    colors = {"direct": _ORANGE, "worked": _BLUE, "checked": _GREEN, "none": _GREY}
    for k in names:
        sx, sy = _series(records, f"strategy_{k}")
        _line(ax, sx, sy, "no reasoning" if k == "none" else k, colors[k])
    ax.set_ylim(-0.03, 1.03)
    return _grpo_png(fig, ax, "share of the step's completions", "GRPO: the strategies the completions followed")


def expert_load(records: Sequence[dict], layer_names: Sequence[str] | None, title: str) -> bytes | None:
    """One heat map per MoE layer: experts (rows) x logged steps (columns), colored by the expert's share of
    the layer's routed tokens; white is a perfectly balanced 1/E, red over-loaded, blue under-loaded. Layers
    whose loads are all zero (an MTP module that a stage does not run) are left out."""
    rows = [(num(r.get("step")), r["expert_load"]) for r in records
            if r.get("event") == "train" and isinstance(r.get("expert_load"), list) and r["expert_load"]]
    if not rows:
        return None
    n_layers = max(len(load) for _, load in rows)
    shapes = {len(x) for _, load in rows for x in load if isinstance(x, list)}
    if len(shapes) != 1:
        return None
    n_exp = shapes.pop()
    data = np.full((n_layers, len(rows), n_exp), np.nan)
    for j, (_, load) in enumerate(rows):
        for i, x in enumerate(load):
            if isinstance(x, list):
                data[i, j] = [num(v) for v in x]
    keep = [i for i in range(n_layers) if np.nan_to_num(data[i]).any()]
    if not keep or n_exp < 2:
        return None
    if len(keep) > MAX_LAYERS:  # a deep model: evenly spaced layers, the first and the last among them
        shown = [keep[round(k * (len(keep) - 1) / (MAX_LAYERS - 1))] for k in range(MAX_LAYERS)]
        title += f" ({MAX_LAYERS} of {len(keep)} layers)"
        keep = shown
    names = list(layer_names or [])
    names += [f"MoE layer {i + 1}" for i in range(len(names), n_layers)]
    steps = np.array([s for s, _ in rows])
    # column edges halfway between logged steps, so unevenly logged steps keep their place on the axis
    mids = (steps[1:] + steps[:-1]) / 2 if len(steps) > 1 else np.array([])
    first, last = (steps[0] - 0.5, steps[-1] + 0.5) if len(steps) == 1 else (
        steps[0] - (mids[0] - steps[0]), steps[-1] + (steps[-1] - mids[-1]))
    edges = np.concatenate([[first], mids, [last]])
    balanced = 1 / n_exp
    vmax = max(2 * balanced, float(np.nanmax(data[keep])))
    norm = TwoSlopeNorm(vmin=0.0, vcenter=balanced, vmax=vmax)
    ncols = min(3, len(keep))
    nrows = math.ceil(len(keep) / ncols)
    fig = _figure(4.2 * ncols + 1.2, 3.0 * nrows + 1.0)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    mesh = None
    for k, i in enumerate(keep):
        ax = axes[k // ncols][k % ncols]
        mesh = ax.pcolormesh(edges, np.arange(n_exp + 1) - 0.5, data[i].T, cmap="RdBu_r", norm=norm)
        ax.set_title(names[i], fontsize=10)
        _step_axis(ax, nbins=5)
        ax.set_ylabel("expert")
        ax.set_yticks(range(n_exp) if n_exp <= 16 else range(0, n_exp, max(1, n_exp // 8)))
    for k in range(len(keep), nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    cb = fig.colorbar(mesh, ax=axes, shrink=0.9)
    cb.set_label(f"share of the layer's routed tokens\n(white = balanced, 1/{n_exp} = {balanced:.3g})")
    fig.suptitle(title)
    return _png(fig)


def expert_maxvio(balance: dict[str, Any] | None, layer_names: Sequence[str] | None, title: str) -> bytes | None:
    """MaxVio of each MoE layer over training (loads summed over a window of steps, nanoseek.report.balance),
    with the target line and the point by which balancing should have settled."""
    if not balance or not balance.get("steps"):
        return None

    mv = np.array(balance["maxvio"], dtype=float)
    steps = balance["steps"]
    names = list(layer_names or [])
    names += [f"MoE layer {i + 1}" for i in range(len(names), mv.shape[1])]
    fig = _figure(7.5, 4.0)
    ax = fig.subplots()
    colors = [_BLUE, _ORANGE, _GREEN, _RED, _PURPLE, _GREY]
    for i in range(mv.shape[1]):
        if np.nan_to_num(mv[:, i]).any():
            ax.plot(steps, mv[:, i], color=colors[i % len(colors)], linewidth=1.2, label=names[i])
    ax.axhline(TARGET, color="black", linestyle="--", linewidth=1, label=f"target {TARGET:g}")
    ax.axvline(balance["settle_step"], color=_GREY, linestyle=":", linewidth=1, label="10% of the run")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel(f"MaxVio over {balance['window']} steps")
    _step_axis(ax)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def task_accuracy(logs: dict[str, Sequence[dict]], stage_names: dict[str, str]) -> bytes | None:
    """Held-out task accuracy (the logs' task_accuracy, measured at each evaluation) against the tokens each
    stage had trained on: pretraining in its plain style, later stages in the chat template."""
    series = []
    for stage, records in logs.items():
        tokens = {}
        for r in records:
            if r.get("event") == "train" and not math.isnan(num(r.get("tokens"))):
                tokens[num(r.get("step"))] = num(r.get("tokens"))
        keys = sorted({k for r in records if r.get("event") == "eval" for k in r if k.startswith("task_accuracy")})
        lines = {}
        for key in keys:
            xs, ys = _series(records, key, event="eval")
            pts = [(tokens[x], y) for x, y in zip(xs, ys) if x in tokens]
            if pts:
                lines[key.removeprefix("task_accuracy").removeprefix("_") or "all tasks"] = pts
        if "all tasks" in lines:
            series.append((stage, lines))
    if not series:
        return None
    fig = _figure(5.0 * len(series) + 1.5, 4.0)
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    colors = [_ORANGE, _GREEN, _RED, _PURPLE, _GREY, "#8c564b", "#e377c2", "#17becf"]
    for ax, (stage, lines) in zip(axes, series):
        for i, (label, pts) in enumerate(lines.items()):
            bold = label == "all tasks"
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=_BLUE if bold else colors[i % len(colors)],
                    marker="o", markersize=3 if bold else 2, linewidth=2.2 if bold else 0.9, alpha=1 if bold else 0.8,
                    label=label)
        ax.set_title(stage_names.get(stage, stage), fontsize=10)
        ax.set_xlabel("tokens trained on")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy (%)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Held-out task accuracy during training (greedy)")
    return _png(fig)
