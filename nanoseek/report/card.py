"""The report card of a run folder: RUN/report.md and its plots in RUN/plots/.

    from nanoseek.report import write_report
    write_report("run")                     # -> Path("run/report.md"); measure=False skips loading the model

It reads what the stages left (docs/post-training.md, "Report card"): RUN/speedrun.json (preset, stage times,
machine), the training logs RUN/{pretrain,sft,rl}/log.jsonl with their checkpoints, and the task evaluations
RUN/eval/{pretrain,sft,rl}.json. A training run directory of its own (`nanoseek pretrain --out RUN`: RUN/log.jsonl
and RUN/checkpoints/) is reported as a one-stage run. Whatever is missing, its section says so and names the
command that makes it; a file that is there but unreadable is a DataError naming it.

The cost figures are nanoseek.cost's, counted as `nanoseek cost RUN_DIR` counts them: FLOPs per token from each
stage's checkpoint config with causal attention (the logs' MFU counts all T keys and is rescaled), the log's tokens and
peak, and GPU-hours on each device of the hardware table at this run's MFU and at a typical large run's.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Callable

from nanoseek.cost import HARDWARE, TYPICAL_MFU, hours_unit, on_other_hardware, with_run_cpu
from nanoseek.data import tasks
from nanoseek.errors import DataError, UserError
from nanoseek.io import atomic_write_bytes, atomic_write_text
from nanoseek.model import count_params
from nanoseek.report import plots
from nanoseek.report.balance import SETTLE, TARGET, WINDOW
from nanoseek.report.decode import measure_decode
from nanoseek.report.facts import fact_accuracy
from nanoseek.report.runfolder import (COMPARED, SAMPLED, STAGE_NAMES, TRAINING, Run, StageCost, load_run,
                                       machine_price, stage_costs)
from nanoseek.speedrun import PLAIN_STAGES, RL_RUNS
from nanoseek.train.rewards import split_completion
from nanoseek.units import dollars, duration, flop, pct, si

PLOT_NAMES = ("loss.png", "task_accuracy.png", "grpo_reward.png", "grpo_length.png", "grpo_strategies.png",
              "grpo_paths.png", "expert_load_pretrain.png",
              "expert_maxvio_pretrain.png", "expert_load_sft.png", "expert_maxvio_sft.png", "expert_load_rl.png",
              "expert_maxvio_rl.png")
HELDOUT = "_heldout_wordings"  # eval/STAGE_heldout_wordings.json: questions in wordings kept out of training
ANSWERS = 6  # held-out problems shown at the end


# ---- markdown ----------------------------------------------------------------------------------------
def _esc(text: Any) -> str:
    """Text as literal markdown (table cells too): no emphasis, links, HTML or cell breaks."""
    s = str(text).replace("\\", "\\\\").replace("\n", " ")
    for ch in "`*_[]<>|#":
        s = s.replace(ch, "\\" + ch)
    return s


def _backticks(text: str) -> int:
    """The longest run of backticks in text."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return longest


def _code(text: Any) -> str:
    """Inline code that survives backticks in the text."""
    s = str(text).replace("\n", " ")
    n = _backticks(s)
    return f"`{s}`" if n == 0 else f"{'`' * (n + 1)} {s} {'`' * (n + 1)}"


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in text, so the block holds it whole."""
    return "`" * max(3, _backticks(text) + 1)


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """A markdown table; align: one letter per column, l or r (default: the first left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows]


def _num(v: Any, spec: str) -> str:
    """A logged number formatted, or "?" for anything else (a log writes inf/nan as strings)."""
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "?"


def _rate(v: Any) -> str:
    return pct(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "?"


def _stage_dir(run: Run, stage: str) -> Path:
    """Where a stage's training run is (or would be)."""
    return run.dirs.get(stage, run.root / stage)


def _command(run: Run, piece: str) -> str:
    """The command that makes a missing piece ("pretrain", "sft", "rl", or "eval STAGE") as the speedrun runs it:
    the one place the report writes commands, so its hints cannot drift from the pipeline."""
    R = run.root
    if piece == "pretrain":
        return f"nanoseek pretrain --data {R}/tokens --out {R}/pretrain"
    if piece == "sft":
        return f"nanoseek sft --checkpoint {R}/pretrain --data {R}/data/sft.jsonl --out {R}/sft"
    if piece == "rl":
        return f"nanoseek rl --checkpoint {R}/sft --problems {R}/data/rl.jsonl --out {R}/rl"
    stage = piece.removeprefix("eval ")
    problems = (f"--problems {R}/data/test.jsonl" if (R / "data" / "test.jsonl").is_file() else "--task all")
    return (f"nanoseek eval --checkpoint {_stage_dir(run, stage)} {problems} --style "
            f"{'plain' if stage in PLAIN_STAGES else 'chat'} --out {R}/eval/{stage}.json --completions "
            f"{R}/eval/{stage}.completions.jsonl")


def _missing(what: str, command: str) -> str:
    return f"*Missing: {what}.* `{command}` makes it."


def _section_cost(run: Run, rows: list[StageCost]) -> list[str]:
    out = ["## Time and cost", ""]
    if not rows:
        return out + [_missing("stage times and training logs", f"nanoseek speedrun {run.root}"), ""]
    price, price_note = machine_price(run)
    table, total_wall, total_cost = [], 0.0, 0.0
    for r in rows:
        cost = r.wall_s * r.processes / 3600 * price if r.wall_s is not None else None
        total_wall += r.wall_s or 0.0
        total_cost += cost or 0.0
        table.append([STAGE_NAMES.get(r.stage, r.stage.replace("_", " ")), duration(r.wall_s) if r.wall_s is not None
                      else "—", f"{r.tokens:,}" if r.tokens else "—", flop(r.flops) if r.flops else "—",
                      pct(r.step_mfu) if r.step_mfu is not None else "—",
                      pct(r.wall_mfu) if r.wall_mfu is not None else "—",
                      dollars(cost) if cost is not None else "—", _esc(r.note)])
    trained = [r for r in rows if r.flops]
    flops = sum(r.flops for r in trained)
    tokens = sum(r.tokens or 0 for r in trained)
    peak_time = sum(r.wall_s * r.peak for r in trained if r.wall_s and r.peak)
    # the whole training's MFU while stepping: each stage's stepping time is its FLOPs / (MFU x peak)
    busy = sum(r.flops / (r.step_mfu * r.peak) for r in trained if r.step_mfu and r.peak)
    measured = flops / sum(r.flops / r.step_mfu for r in trained if r.step_mfu) if busy else 0.0
    table.append(["**total**", f"**{duration(total_wall)}**", f"**{tokens:,}** trained" if tokens else "—",
                  f"**{flop(flops)}**" if flops else "—", pct(measured) if measured else "—",
                  pct(flops / peak_time) if peak_time else "—", f"**{dollars(total_cost)}**", ""])
    out += _table(["stage", "wall time", "tokens", "training FLOPs", "MFU stepping", "MFU wall", "cost", "note"], table,
                  "lrrrrrrl")
    peaks = sorted({f"{flop(r.peak)}/s ({_esc(r.peak_source)})" for r in trained if r.peak})
    out += ["", f"Cost: wall time x processes at {price_note}. Training FLOPs: tokens x FLOPs per token of the "
            "stage's checkpoint config with causal attention, as the training logs and `nanoseek cost` count them. "
            "RL counts its training passes over the sampled completions, not the sampling "
            "itself. "
            "MFU stepping is the median over logged steps; MFU wall divides by the whole wall time, start-up, "
            "evaluation and checkpoints included." + (f" Peak used: {', '.join(peaks)}." if peaks else ""), ""]
    if not flops:
        return out
    # the same training on the hardware table, at this run's MFU and at a typical large run's
    cpu = next((r for r in trained if "measured" in r.peak_source and r.peak), None)
    devices = with_run_cpu(HARDWARE, cpu.peak, cpu.peak_source, cpu.processes) if cpu is not None else HARDWARE
    hw_rows = on_other_hardware(flops, (measured or None, TYPICAL_MFU), devices)
    unit, scale = hours_unit(hw_rows)

    def fmt(h: float | None) -> str:
        return "—" if h is None else f"{h * scale:,.3g}" if h * scale < 1000 else f"{h * scale:,.0f}"

    def money(h: float | None, price: float) -> str:
        return "—" if h is None else dollars(h * price)

    out += [f"### The same {flop(flops)} on other hardware", "",
            f"At this run's MFU ({pct(measured)}, stepping, weighted by time) and at a typical large run's "
            f"({pct(TYPICAL_MFU)}), on each device's dense bf16 peak, at the table's prices "
            "(`nanoseek cost --list-hardware`):", ""]
    out += _table(["hardware", "bf16 peak", f"{unit} at {pct(measured)}", "$", f"{unit} at {pct(TYPICAL_MFU)}", "$"],
                  [[_esc(r.hardware.name), f"{flop(r.peak)}/s", fmt(r.hours[0]), money(r.hours[0], r.price),
                    fmt(r.hours[1]), money(r.hours[1], r.price)] for r in hw_rows])
    if cpu is not None:
        out += ["", "An MFU measured on a CPU does not carry over to a GPU, where a small model's matmuls leave most "
                "of the chip idle; the typical column assumes a model large enough to fill it."]
    return out + [""]


# ---- the run, the machine and the model ------------------------------------------------------------------
def _section_header(run: Run) -> list[str]:
    sr = run.speedrun or {}
    preset = sr.get("preset") or {}
    name = preset.get("name")
    written = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    what = (f"A lone {STAGE_NAMES[run.lone]} run" if run.lone else f"Preset **{_esc(name)}**" if name
            else "A run folder")
    out = [f"# Report card: {_esc(run.root.resolve().name)}", "",
           f"{what}" + (f", started {_esc(sr['started'])}" if sr.get("started") else "") + f"; written {written} "
           "by `nanoseek report`.", ""]
    if not run.speedrun and not run.lone:
        out += ["*No speedrun.json* (`nanoseek speedrun` writes it with the preset, each stage's time and the "
                "machine): times come from the training logs.", ""]
    if len(preset) > 1:
        body = json.dumps({k: v for k, v in preset.items() if k != "name"}, indent=2, default=str)
        out += ["<details><summary>preset settings</summary>", "", f"{_fence(body)}json", body, _fence(body), "",
                "</details>", ""]
    return out


def _section_machine(run: Run) -> list[str]:
    out = ["## Machine", ""]
    machine = (run.speedrun or {}).get("machine")
    if machine:
        labels = {"cpu": "CPU", "amx_bf16": "AMX bf16 matmuls", "threads": "threads", "device": "device", "gpu": "GPU"}
        shown = {True: "yes", False: "no", None: "—"}
        rows = [[labels.get(k, _esc(k)), _esc(shown[v] if v is None or isinstance(v, bool) else v)]
                for k, v in machine.items()]
        out += _table(["", "value"], rows, "ll")
    else:
        out.append("Not recorded (speedrun.json's \"machine\", written by `nanoseek speedrun`).")
    starts = {s: next((r for r in recs if r.get("event") == "start"), None) for s, recs in run.logs.items()}
    lines = []
    for s, r in starts.items():
        if r:
            cfg = r.get("config", {})
            lines.append(f"- {STAGE_NAMES[s]}: {r.get('world_size', 1)} process(es), {_esc(cfg.get('dtype', '?'))}, "
                         f"peak {flop(float(r['peak_flops']))}/s ({_esc(r.get('peak_source', '?'))})"
                         if isinstance(r.get("peak_flops"), (int, float)) else
                         f"- {STAGE_NAMES[s]}: {r.get('world_size', 1)} process(es), {_esc(cfg.get('dtype', '?'))}")
    if lines:
        out += ["", "The training logs:", ""] + lines
    return out + [""]


def _section_model(run: Run) -> list[str]:
    out = ["## Model", ""]
    final = run.final
    if final is None:
        return out + [_missing("a checkpoint (the model's config and weights)", _command(run, "pretrain")), ""]
    cfg, ckpt = run.configs[final], run.checkpoints[final]
    pc = count_params(cfg)
    out += [f"The final model: {_code(run.rel(ckpt))} (after {STAGE_NAMES[final]}).", ""]
    rows = [["total", f"{pc.total:,}", si(pc.total)], ["active per token", f"{pc.active:,}", si(pc.active)],
            ["embedding" + ("" if cfg.tie_word_embeddings else " (input + output head)"), f"{pc.embedding:,}",
             si(pc.embedding)],
            ["non-embedding, active", f"{pc.active_non_embedding:,}", si(pc.active_non_embedding)]]
    if pc.mtp:
        rows.append([f"MTP module{'s' if cfg.num_nextn_predict_layers > 1 else ''} (not in total)", f"{pc.mtp:,}",
                     si(pc.mtp)])
    out += _table(["parameters", "count", ""], rows) + [""]
    moe = cfg.num_moe_layers
    dense = cfg.num_hidden_layers - moe
    shape = [["vocabulary", f"{cfg.vocab_size:,}"], ["hidden size", str(cfg.hidden_size)],
             ["layers", f"{cfg.num_hidden_layers} ({dense} dense, {moe} MoE)"
              + (f" + {cfg.num_nextn_predict_layers} MTP" if cfg.num_nextn_predict_layers else "")],
             ["attention (MLA)", f"{cfg.num_attention_heads} heads; q_lora_rank {cfg.q_lora_rank or 'none'}, "
              f"kv_lora_rank {cfg.kv_lora_rank}, head dims {cfg.qk_nope_head_dim} + {cfg.qk_rope_head_dim} rope, "
              f"v {cfg.v_head_dim}; cache {cfg.kv_lora_rank + cfg.qk_rope_head_dim} values per token and layer"]]
    if moe:
        shape.append(["experts", f"{cfg.n_routed_experts} routed (top-{cfg.num_experts_per_tok}) + "
                      f"{cfg.n_shared_experts} shared, width {cfg.moe_intermediate_size}"])
    if dense:
        shape.append(["dense FFN width", str(cfg.intermediate_size)])
    shape.append(["context", f"{cfg.max_position_embeddings:,} positions (rope theta {cfg.rope_theta:g})"])
    return out + _table(["config", ""], shape, "ll") + [""]


# ---- final metrics -------------------------------------------------------------------------------------
def _last_eval(records: list[dict[str, Any]], key: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    evals = [r for r in records if r.get("event") == "eval" and isinstance(r.get(key), (int, float))]
    return (evals[0], evals[-1]) if evals else (None, None)


def _section_metrics(run: Run, decode: dict[str, Any] | None) -> list[str]:
    out = ["## Final metrics", ""]
    rows = []
    if "pretrain" in run.logs:
        _, e = _last_eval(run.logs["pretrain"], "val_bpb")
        rows.append(["validation bits per byte, pretraining",
                     f"**{_num(e['val_bpb'], '.4f')}** (loss {_num(e.get('val_loss'), '.4f')} nats per token, step "
                     f"{_num(e.get('step'), ',')})" if e else "no evaluation logged (`--eval-every`)"])
    elif not run.lone:
        rows.append(["validation bits per byte, pretraining", f"missing: `{_command(run, 'pretrain')}`"])
    if "sft" in run.logs:
        _, e = _last_eval(run.logs["sft"], "val_loss")
        rows.append(["SFT validation", f"loss {_num(e['val_loss'], '.4f')} nats per assistant token, token accuracy "
                     f"{_num(e.get('val_accuracy'), '.1%')} (step {_num(e.get('step'), ',')})" if e
                     else "no evaluation logged"])
    elif not run.lone:
        rows.append(["SFT validation", f"missing: `{_command(run, 'sft')}`"])
    if "rl" in run.logs:
        first, last = _last_eval(run.logs["rl"], "val_accuracy")
        rows.append(["RL validation accuracy (greedy)", f"{_num(first['val_accuracy'], '.1%')} (step "
                     f"{_num(first.get('step'), ',')}) → **{_num(last['val_accuracy'], '.1%')}** (step "
                     f"{_num(last.get('step'), ',')})" if last else "no evaluation logged"])
    elif not run.lone:
        rows.append(["RL validation accuracy (greedy)", f"missing: `{_command(run, 'rl')}`"])
    for name, bpb in run.eval_bpb.items():  # `nanoseek eval --data` results saved beside the accuracy
        if isinstance(bpb.get("val_bpb"), (int, float)):
            rows.append([f"bits per byte after {STAGE_NAMES.get(name, _esc(name))} (eval/{_esc(name)}.json)",
                         f"{bpb['val_bpb']:.4f}"])
    for s in [n for n in _eval_order(run) if n in run.answers]:
        f = fact_accuracy(sample["completion"] for sample in run.answers[s][0])
        if f["facts"]:
            wrong = f" (wrong, e.g.: {', '.join(_code(w) for w in f['wrong'])})" if f["wrong"] else ""
            rows.append([f"one-digit facts in the answers, {_stage_label(s)}",
                         f"{f['right']:,} of {f['facts']:,} right ({pct(f['accuracy'])}){wrong}"])
    for s, b in run.balance.items():
        if b is None:
            continue
        worst = max(b["p95_after"]) if b["p95_after"] else None
        tokens = f", ~{si(b['window_tokens'])} tokens" if b.get("window_tokens") else ""
        rows.append([f"expert balance, {STAGE_NAMES[s]}",
                     f"MaxVio (over {b['window']} steps{tokens}) {_num(b['at_settle'], '.2f')} at step {b['settle_step']:,} "
                     f"({SETTLE:.0%} of the run), 95th percentile after it {_num(worst, '.2f')} (worst layer; target "
                     f"{TARGET:g}); starved expert-steps {pct(b['starved_share'])}"])
    out += _table(["metric", "value"], rows, "ll") + [""]
    out += _accuracy_table(run)
    out += _section_rl_paths(run)
    out += _decode_lines(run, decode)
    return out


def _eval_order(run: Run) -> list[str]:
    """The evaluations in pipeline order, each stage's held-out-wordings run right after it, then the runs
    beside the pipeline and the sampled evaluations, others last."""
    names = [n for s in TRAINING for n in (s, s + HELDOUT)] + list(COMPARED) + list(SAMPLED)
    names = [n for n in names if n in run.evals]
    return names + [n for n in run.evals if n not in names]


def _stage_label(name: str) -> str:
    """An evaluation's name as the report says it: "SFT", "SFT, questions in wordings kept out of training"."""
    label = STAGE_NAMES.get(name.removesuffix(HELDOUT), _esc(name.removesuffix(HELDOUT)))
    return label + (", questions in wordings kept out of training" if name.endswith(HELDOUT) else "")


def _accuracy_table(run: Run) -> list[str]:
    out = ["### Task accuracy after each stage", ""]
    names = _eval_order(run)
    want = [s for s in TRAINING if s in run.dirs] or list(TRAINING[:1])
    if not names:
        return out + [_missing(f"task evaluations ({', '.join(f'eval/{s}.json' for s in want)})",
                               _command(run, f"eval {want[-1]}")), ""]
    tasks: list[str] = []
    for s in names:
        tasks += [r["task"] for r in run.evals[s]["rows"] if r["task"] != "all" and r["task"] not in tasks]
    header = ["after", "prompt style"] + [_esc(t) for t in tasks] + (["all"] if len(tasks) > 1 else []) + \
        ["well formed", "strategies", "problems x samples"]
    rows, overall = [], []
    for s in names:
        res = run.evals[s]
        by_task = {r["task"]: r for r in res["rows"]}
        summary = res.get("summary") or by_task.get("all", res["rows"][0])
        settings = res.get("settings") or {}
        style = settings.get("style", "chat")
        cells = [_rate(by_task[t]["accuracy"]) if t in by_task else "—" for t in tasks]
        if len(tasks) > 1:
            se = summary.get("accuracy_se")
            cells.append(f"**{_rate(summary.get('accuracy'))}**" + (f" ± {_rate(se)}" if se is not None else ""))
        fmt = summary.get("format_rate")
        rows.append([_stage_label(s), _esc(style) + (" (prompt line, `Answer:` line)" if style == "plain"
                                           else " (template, `<think>`)"), *cells,
                     _rate(fmt), _strategies_cell(res.get("by_strategy")),
                     f"{summary.get('problems', '?')} x {settings.get('samples', summary.get('samples', '?'))}"])
        if s in TRAINING:
            overall.append(f"{STAGE_NAMES.get(s, s)} {_rate(summary.get('accuracy'))}")
    out += _table(header, rows)
    s0 = run.evals[names[0]].get("settings") or {}
    out += ["", "Accuracy: the share of sampled answers that are right (pass@1), on held-out problems, ± its "
            "standard error over problems"
            + (f"; temperature {_num(s0.get('temperature'), 'g')}, at most {_num(s0.get('max_new_tokens'), ',')} "
               "new tokens"
               if s0 else "") + ". A model after pretraining alone is asked in the plain style of its pretraining "
            "text; after SFT and RL in the chat template, answering after `</think>`. Strategies: how the answers "
            "were reached (direct: one line; worked: step by step; checked: worked, then checked), and how often each "
            "was right. Files: "
            + ", ".join(_code(run.rel(run.eval_files[s])) for s in names) + ".", ""]
    if len(overall) > 1:
        out += ["All tasks: " + " → ".join(overall) + ".", ""]
    missing = [s for s in TRAINING if s in run.dirs and s not in run.evals]
    for s in missing:
        out += [_missing(f"eval/{s}.json (accuracy after {STAGE_NAMES[s]})", _command(run, f"eval {s}")), ""]
    return out


# each GRPO run of a speedrun (where it starts: speedrun.RL_RUNS), as the report's side-by-side table names it
PATH_LABELS = {"rl": "R1: SFT, then GRPO", "rl_zero": "R1-Zero: GRPO from the base model, no SFT",
               "rl_random": "control: GRPO from SFT, reward a coin flip"}


def _worked_share(res: dict[str, Any]) -> float | None:
    """The share of an evaluation's answers that worked the problem (worked or checked)."""
    rows = res.get("by_strategy")
    return sum(r.get("share", 0) for r in rows if r.get("strategy") in ("worked", "checked")) if rows else None


def _section_rl_paths(run: Run) -> list[str]:
    """R1 beside R1-Zero and the random-reward control, each from its own starting model on the same held-out
    problems; and pass@1 / pass@8 / maj@8 before and after RL when they were sampled."""
    out: list[str] = []
    if any(s in run.evals or s in run.dirs for s in COMPARED):
        out += ["### RL paths side by side", "", "Each GRPO run with the same settings and problems, scored greedily "
                "on the same held-out problems before and after it (R1-Zero in the base model's plain format, the "
                "others in the chat template). The random reward is the control: what RL gains without a signal.", ""]
        rows = []
        for stage, (start, _) in RL_RUNS.items():
            what = PATH_LABELS[stage]
            if stage not in run.evals or start not in run.evals:
                if stage in run.dirs or stage in run.evals:
                    missing = next(x for x in (start, stage) if x not in run.evals)
                    rows.append([what, f"missing eval/{missing}.json: `{_command(run, f'eval {missing}')}`"]
                                + [""] * 5)
                continue
            b, a = run.evals[start]["summary"], run.evals[stage]["summary"]
            se = (b["accuracy_se"] ** 2 + a["accuracy_se"] ** 2) ** 0.5
            worked = [_worked_share(run.evals[x]) for x in (start, stage)]
            secs = run.stage_seconds(stage)
            rows.append([what, f"{_rate(b['accuracy'])} ± {_rate(b['accuracy_se'])}",
                         f"**{_rate(a['accuracy'])}** ± {_rate(a['accuracy_se'])}",
                         f"{100 * (a['accuracy'] - b['accuracy']):+.1f} ± {100 * se:.1f} points",
                         f"{_num(b.get('mean_tokens'), '.1f')} → {_num(a.get('mean_tokens'), '.1f')}",
                         " → ".join(_rate(w) for w in worked) if None not in worked else "—",
                         duration(secs) if secs is not None else "—"])
        out += _table(["run", "accuracy before", "after", "change", "mean answer tokens", "worked answers",
                       "GRPO time"], rows) + [""]
    if all(name in run.evals for name in SAMPLED):
        rows = []
        for name in SAMPLED:
            s = run.evals[name]["summary"]
            rows.append([STAGE_NAMES[name.removesuffix("_pass8")], f"{_rate(s.get('pass@1'))} ± {_rate(s['accuracy_se'])}",
                         f"**{_rate(s.get('pass@8'))}**", _rate(s.get("maj@8")), f"{s['problems']:,}"])
        out += ["### Sampled: pass@1, pass@8 and maj@8", "", "8 answers per held-out problem at temperature 1: pass@8 "
                "counts a problem solved when any answer is right, maj@8 when the most common answer is. RL that "
                "only sharpens what sampling already finds raises pass@1 and maj@8 more than pass@8.", ""]
        out += _table(["model", "pass@1", "pass@8", "maj@8", "problems"], rows) + [""]
    return out


def _strategies_cell(rows: list[dict[str, Any]] | None) -> str:
    """ "99% worked (89% right), 1% direct (100% right)": the strategies the answers followed, most used first."""
    if not rows:
        return "—"
    rows = sorted(rows, key=lambda r: -r.get("share", 0))
    return ", ".join(f"{_rate(r.get('share'))} {_esc(r.get('strategy'))} ({_rate(r.get('accuracy'))} right)"
                     for r in rows if r.get("share"))


# ---- decoding the final model ----------------------------------------------------------------------------
def _decode_prompts(run: Run, n: int = 4) -> list[str]:
    """Held-out prompts: the evaluated problems' (the last evaluation's first), else the built-in tasks' test
    split."""
    for s in reversed(list(run.answers)):
        prompts = list(dict.fromkeys(a["prompt"] for a in run.answers[s][0]))
        if prompts:
            return prompts[:n]
    return [p.prompt for p in tasks.generate("arithmetic", "test", n, "1-3")]


def _decode_lines(run: Run, decode: dict[str, Any] | None) -> list[str]:
    out = ["### Decoding the final model", ""]
    if run.final is None:
        return out + ["No checkpoint to decode with.", ""]
    if decode is None:
        return out + [f"Not measured (`--no-measure`): `nanoseek report {run.root}` loads the final checkpoint and "
                      "measures its decode speed and MTP acceptance rate.", ""]
    if "error" in decode:
        return out + [f"Could not measure: {_esc(decode['error'])}", ""]
    rows = []
    for key, label in (("speculative", "MTP speculation auto (the default)"), ("plain", "one token per step")):
        d = decode.get(key)
        if d:
            acc = d["acceptance_rate"]
            rows.append([label, f"**{d['tokens_per_s']:,.1f}**", pct(acc) if acc is not None else "—",
                         f"{d['tokens']:,} over {d['prompts']} prompt(s)"])
    out += _table(["decoding", "tokens/s", "MTP acceptance rate", "generated"], rows)
    note = (f"Measured while writing this report on {decode['device']} ({decode['dtype']}): greedy, one request at a "
            f"time, at most {decode['max_new_tokens']} new tokens per held-out prompt, after a warm-up; tokens/s over "
            "the decode steps (prefill apart).")
    if "same" in decode:
        note += (" Auto speculation drafts one token per step where that measures faster than plain decoding, and "
                 "tries the other mode now and then. The acceptance rate is the share of drafted tokens the model "
                 f"kept; greedy output with and without speculation agreed on {decode['same']} of "
                 f"{decode['compared']} prompt(s).")
        measured = (decode.get("speculative") or {}).get("speedup_measured")
        if measured:
            note += f" Speculating on every step measured {measured:.2f}x plain decoding's speed here."
    else:
        note += " The model has no MTP module (num_nextn_predict_layers = 0): no speculation, no acceptance rate."
    return out + ["", note, ""]


# ---- plots ---------------------------------------------------------------------------------------------
def _layer_names(cfg) -> list[str] | None:
    if cfg is None:
        return None
    return [f"layer {i} (MoE)" for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)] + \
        [f"MTP module {d + 1}" for d in range(cfg.num_nextn_predict_layers)]


def make_plots(run: Run) -> tuple[dict[str, str], list[str]]:
    """Draw every plot the logs allow into RUN/plots/; ({file name: caption}, [what is missing, with the
    command that makes it]). Plots of an earlier report that cannot be drawn now are removed."""
    made: dict[str, str] = {}
    missing: list[str] = []
    d = run.root / "plots"

    def put(name: str, png: bytes | None, caption: str, why: str, stages: tuple[str, ...]) -> None:
        """stages: those whose logs the plot draws (a lone run misses no other stage's plot)."""
        if png is None:
            if not run.lone or run.lone in stages:
                missing.append(why)
            return
        atomic_write_bytes(d / name, png)
        made[name] = caption

    losses = {s: run.logs[s] for s in ("pretrain", "sft") if s in run.logs}
    put("loss.png", plots.loss_curves(losses), "Loss curves: training (next-token) and validation loss of "
        + " and ".join(STAGE_NAMES[s] for s in losses) + ".",
        f"loss curves: no pretraining or SFT steps logged (`{_command(run, 'pretrain')}`)",
        ("pretrain", "sft"))
    rl = run.logs.get("rl")
    rl_hint = f"`{_command(run, 'rl')}`"
    put("grpo_reward.png", plots.grpo_rewards(rl) if rl else None,
        "GRPO: mean reward, its parts and the greedy validation accuracy per step.",
        f"GRPO reward and accuracy: no RL steps logged ({rl_hint})", ("rl",))
    start = next((r for r in rl or [] if r.get("event") == "start"), {})
    limit = start.get("config", {}).get("max_new_tokens")
    put("grpo_length.png", plots.grpo_lengths(rl, limit if isinstance(limit, int) else None) if rl else None,
        "GRPO: completion length per step (mean, longest, of right and of wrong answers) and the share cut off by "
        "the limit.", f"GRPO completion length: no RL steps logged ({rl_hint})", ("rl",))
    put("grpo_strategies.png", plots.grpo_strategies(rl) if rl else None,
        "GRPO: the share of completions that answered directly, worked the problem, or worked and checked it, "
        "per step.", f"GRPO strategies: no RL steps logged with strategy shares ({rl_hint})", ("rl",))
    runs = {STAGE_NAMES[s]: run.logs[s] for s in RL_RUNS if s in run.logs}
    if len(runs) > 1:  # only beside another run: grpo_reward.png has the one
        put("grpo_paths.png", plots.grpo_paths(runs), "GRPO runs side by side: the share of sampled answers that "
            "are right per step (smoothed) and the greedy validation accuracy (markers).",
            "GRPO runs side by side: no step logged accuracy", ("rl",))
    curves = {s: run.logs[s] for s in ("pretrain", "sft") if s in run.logs}
    put("task_accuracy.png", plots.task_accuracy(curves, STAGE_NAMES),
        "Held-out task accuracy against the tokens trained on, measured at each evaluation (pretraining: plain "
        "prompts; SFT: the chat template).",
        "task accuracy during training: no task_accuracy in the logs (`--eval-problems-file`)", ("pretrain", "sft"))
    for s in TRAINING:
        if s not in run.logs:
            continue
        names = _layer_names(run.configs.get(s))
        png = plots.expert_load(run.logs[s], names,
                                f"Expert load over {STAGE_NAMES[s]}: each expert's share of its layer's tokens")
        put(f"expert_load_{s}.png", png, f"Expert load per MoE layer over {STAGE_NAMES[s]} (experts x steps).",
            f"expert load over {STAGE_NAMES[s]}: its log has no expert_load (a dense model, or an older log)", (s,))
        if png is not None and s != "rl":  # GRPO's few steps carry too few tokens for windowed MaxVio
            put(f"expert_maxvio_{s}.png", plots.expert_maxvio(run.balance.get(s), names,
                                                              f"Expert balance over {STAGE_NAMES[s]}"),
                f"MaxVio (busiest expert's load / mean load - 1) per MoE layer over {STAGE_NAMES[s]}, on the loads of "
                f"{WINDOW} consecutive steps.", f"expert balance over {STAGE_NAMES[s]}: too few steps", (s,))
    if "pretrain" not in run.logs and not run.lone:
        missing.append(f"expert load over pretraining: no pretraining log (`{_command(run, 'pretrain')}`)")
    for name in PLOT_NAMES:
        if name not in made and (d / name).is_file():
            (d / name).unlink()
    return made, missing


def _section_plots(made: dict[str, str], missing: list[str]) -> list[str]:
    out = ["## Plots", ""]
    for name, caption in made.items():
        out += [f"![{caption}](plots/{name})", "", f"*{caption}*", ""]
    out += [f"*Missing: {m}.*" for m in missing]
    return out + ([""] if missing else [])


# ---- the final model's answers -------------------------------------------------------------------------
def _pick(samples: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to n samples, taking the tasks in turn so each task shows."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        by_task.setdefault(str(s.get("task", "")), []).append(s)
    out, i = [], 0
    while len(out) < n and any(i < len(v) for v in by_task.values()):
        out += [v[i] for v in by_task.values() if i < len(v)][: n - len(out)]
        i += 1
    return out


def _section_answers(run: Run) -> list[str]:
    out = ["## The final model's answers", ""]
    stage = next((s for s in ("rl", *reversed([x for x in run.answers if x != "rl"])) if s in run.answers), None)
    if stage is None:
        return out + [_missing("the final model's sampled answers (eval/rl.json with \"problems\", or "
                               "eval/NAME.completions.jsonl)", _command(run, f"eval {run.final or 'rl'}")), ""]
    samples, source = run.answers[stage]
    style = ((run.evals.get(stage) or {}).get("settings") or {}).get("style", "chat")
    picked = _pick(samples, ANSWERS)
    right = sum(bool(s.get("correct")) for s in samples)
    out += [f"After {STAGE_NAMES.get(stage, stage)}, on held-out problems ({_code(run.rel(source))}: {right} of "
            f"{len(samples)} right; {len(picked)} shown).", ""]
    for i, s in enumerate(picked, 1):
        out += _answer_lines(s, style, f"### {i}. {_esc(s.get('task', 'problem'))}")
    return out + _section_rl_changed(run)


def _answer_lines(s: dict[str, Any], style: str, heading: str) -> list[str]:
    """One sampled answer: the problem, the reasoning folded, the answer against the reference."""
    text = s["completion"]
    if style == "plain":
        reasoning, answer = text.strip(), s.get("answer")
    else:
        reasoning, answer_part = split_completion(text)
        answer = s.get("answer") if s.get("answer") is not None else (answer_part or "").strip() or None
    mark = "✅ right" if s.get("correct") else "❌ wrong"
    level = f", level {s['difficulty']}" if s.get("difficulty") is not None else ""
    out = [f"{heading}{level}: {mark}", "", f"**Problem:** {_esc(s['prompt'])}", ""]
    if reasoning and reasoning.strip():
        full = reasoning.strip()
        n = len(full.splitlines())
        body = "\n".join(full.splitlines()[:40])[:3000]
        if len(body) < len(full):  # a runaway completion: its start is enough
            body += f"\n… ({len(full) - len(body):,} more characters)"
        label = "the continuation" if style == "plain" else "reasoning (&lt;think&gt;)"
        out += [f"<details><summary>{label}: {n} line{'s' * (n != 1)}</summary>", "", _fence(body), body,
                _fence(body), "", "</details>", ""]
    elif style != "plain":
        out += ["*(no reasoning: the answer came without a `<think>` block)*", ""]
    if s.get("finish_reason") == "length":
        out += ["*(cut off at the token limit)*", ""]
    shown = _code(answer) if answer is not None else "*(none: thinking never finished, or no answer line)*"
    return out + [f"**Answer:** {shown}, {mark}; reference {_code(s.get('reference', '?'))}", ""]


def _section_rl_changed(run: Run) -> list[str]:
    """What RL changed on the same held-out problems: how many answers went from wrong to right and back, and
    one that went from wrong to right, before and after."""
    if "sft" not in run.answers or "rl" not in run.answers:
        return []
    before = {(a["prompt"], a.get("sample", 0)): a for a in run.answers["sft"][0]}
    pairs = [(before[k], a) for a in run.answers["rl"][0] if (k := (a["prompt"], a.get("sample", 0))) in before]
    if not pairs:  # evaluated on different problems: nothing to compare
        return []
    fixed = [(b, a) for b, a in pairs if a.get("correct") and not b.get("correct")]
    broken = sum(1 for b, a in pairs if b.get("correct") and not a.get("correct"))
    out = ["## What RL changed", "", f"Of {len(pairs):,} held-out answers given both after SFT and after RL, "
           f"{len(fixed):,} went from wrong to right and {broken:,} from right to wrong."]
    if fixed:
        b, a = max(fixed, key=lambda pair: pair[1].get("tokens", 0) - pair[0].get("tokens", 0))
        out[-1] += " The one whose answer grew the most, before and after:"
        out += [""] + _answer_lines(b, "chat", "### After SFT") + _answer_lines(a, "chat", "### After RL")
    return out + [""]


# ---- the report ----------------------------------------------------------------------------------------
def write_report(run_dir: str | Path, *, measure: bool = True,
                 announce: Callable[[str], None] | None = None) -> Path:
    """Write RUN/report.md and RUN/plots/*.png from what the run folder holds; returns report.md's path.

    measure: load the final checkpoint and time greedy decoding with and without MTP speculation (about 20 s on
    a CPU at most); False leaves the model unloaded. announce: called with a line before slow steps."""
    say = announce or (lambda _: None)
    run = load_run(run_dir)
    for name, want_dir in (("report.md", False), ("plots", True)):  # before any slow step: what the report writes
        p = run.root / name
        if p.exists() and p.is_dir() != want_dir:
            raise DataError(f"{p} is a {'folder' if p.is_dir() else 'file'}, where the report writes its "
                            f"{'plots folder' if want_dir else 'report.md'}; move it away and run the report again")
    costs = stage_costs(run)
    decode = None
    if measure and run.final is not None:
        say(f"measuring decode speed of {run.rel(run.checkpoints[run.final])} ...")
        try:
            decode = measure_decode(run.checkpoints[run.final], _decode_prompts(run),
                                    chat=run.final != "pretrain")
        except (UserError, RuntimeError, OSError) as e:  # a measurement, not the report: say why, go on
            decode = {"error": f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e)}
    say("drawing plots ...")
    made, missing = make_plots(run)
    parts = [_section_header(run), _section_model(run), _section_machine(run), _section_cost(run, costs),
             _section_metrics(run, decode), _section_plots(made, missing), _section_answers(run)]
    path = run.root / "report.md"
    atomic_write_text(path, "\n".join(line for part in parts for line in part).rstrip() + "\n")
    return path
