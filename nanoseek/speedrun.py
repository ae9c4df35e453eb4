"""The speedrun's pipeline as data and library calls: its presets, its state file, its problem files and its
evaluations. `nanoseek speedrun` drives the stages in order with these (the training stages through their
commands); a script can call them the same way.

    preset = PRESETS["cpu"]
    paths = run_paths(Path("run"))
    write_tasks(preset, paths)                  # every problem file of the run, from the built-in tasks
    evaluate_stage("sft", preset, Path("run"), paths)   # held-out accuracy -> run/eval/sft.json (+ .md)
"""

from __future__ import annotations

import datetime
import json
import platform
import random
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from nanoseek.data import tasks
from nanoseek.data.tasks import strategies
from nanoseek.engine import Engine, resolve_checkpoint
from nanoseek.errors import UserError
from nanoseek.eval import evaluate_tasks, results_markdown
from nanoseek.eval.metrics import to_json
from nanoseek.io import atomic_write_text

FORMAT_VERSION = 1
STAGES = ("tasks", "tokenizer", "tokens", "pretrain", "eval_pretrain", "sft", "eval_sft", "rl", "eval_rl", "report")
# What `nanoseek speedrun --also NAME` adds before the report: the R1 paper's other path, the control that would
# expose a false gain, and sampled accuracy before and after RL. Each is a stage and its evaluation (or two
# evaluations), resumable like the rest; asking for one on a finished run runs just it and rewrites the report.
ALSO = {
    "r1-zero": ("rl_zero", "eval_rl_zero"),  # GRPO straight from the pretrained model, asked in its plain format
    "random-reward": ("rl_random", "eval_rl_random"),  # GRPO from the SFT model, rewarded by a coin flip
    "pass-at-8": ("eval_sft_pass8", "eval_rl_pass8"),  # 8 answers per test problem at T=1: pass@8 and maj@8
}
# the GRPO runs beside the speedrun's own: where each starts and what it changes of the preset's `rl` flags
RL_RUNS = {"rl": ("sft", {}), "rl_zero": ("pretrain", {"prompt_style": "plain"}),
           "rl_random": ("sft", {"reward": "random"})}
PASS_AT = 8  # samples per problem of the pass-at-8 evaluations
PLAIN_STAGES = ("pretrain", "rl_zero")  # models evaluated in the pretraining text's plain format, not in chat


@dataclass(frozen=True)
class Preset:
    """Everything a speedrun does, by name. minutes: expected wall time of each stage on the machine the
    preset is meant for (the progress line's estimate; the report has the measured times)."""

    description: str
    model: str  # a ModelConfig preset (nanoseek info --preset NAME)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    tasks: str = "all"
    difficulty: str = "1-3"
    corpus_problems: int = 6000  # per task, plain text for pretraining
    corpus_mix: dict[str, float] = field(default_factory=dict)  # task -> multiplier of corpus_problems (default 1)
    drills: int = 0  # fact-drill documents mixed into the pretraining text (nanoseek.data.tasks.drills)
    vocab_size: int = 2048
    max_digits: int = 1  # digits per token at most: 1 lets a small model do column arithmetic digit by digit
    pretrain: dict[str, Any] = field(default_factory=dict)  # `nanoseek pretrain` flags
    sft_problems: int = 1000  # per task
    # share of the SFT conversations asked after one or two earlier questions (tasks.write_sft): without them
    # the model answers a chat's second question far worse than its first
    sft_follow_ups: float = 0.3
    sft: dict[str, Any] = field(default_factory=dict)  # `nanoseek sft` flags
    # how solutions are written (nanoseek.data.tasks.strategies): "direct=0.8,worked=0.2" mixes answers that
    # show no work with worked ones, a mix RL can select from
    corpus_strategies: str = "worked"
    sft_strategies: str = "worked"
    rl_problems: int = 200  # per task: GRPO's training prompts (the same tasks and levels, train split)
    rl: dict[str, Any] = field(default_factory=dict)  # `nanoseek rl` flags
    eval_problems: int = 200  # per task, test split, asked in the training wordings
    heldout_problems: int = 100  # per task, test split, asked in wordings kept out of training (chat stages)
    probe_problems: int = 40  # per task: the test problems pretraining and SFT answer at each evaluation
    eval_max_tokens: int = 256
    gpus: int = 0  # > 1: training stages under torchrun
    minutes: dict[str, float] = field(default_factory=dict)

    def stage_minutes(self, stage: str) -> float:
        """The expected minutes of a stage: `minutes`, else those of the stage it repeats (an --also run)."""
        if stage in self.minutes:
            return self.minutes[stage]
        if stage.endswith("_pass8"):  # PASS_AT samples of 1,000 problems, no held-out wordings
            return 0.8 * PASS_AT * self.minutes.get(f"eval_{evaluated_model(stage[5:])}", 0)
        return self.minutes.get("eval_rl" if stage.startswith("eval_") else "rl", 0)

    def pretraining_tokens(self) -> int:
        p = self.pretrain
        return p.get("steps", 1000) * p.get("batch_size", 8) * p.get("seq_len", 256) * max(self.gpus, 1)


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        "the default: cpu-small (4 layers, 16 experts) on the built-in tasks, about 16-20 minutes on 2 CPU cores",
        model="cpu-small", model_overrides=dict(num_nextn_predict_layers=0),
        tasks="arithmetic,digit_sum,sort,word_problem,units", corpus_problems=20000,
        corpus_mix=dict(digit_sum=0.4, word_problem=0.5, sort=1.2, units=1.2), drills=3000,
        pretrain=dict(steps=2400, batch_size=8, seq_len=256, lr=3e-3, decay_frac=0.5, eval_every=480,
                      checkpoint_every=480, optimizer="muon", bias_update_rule="proportional", bias_update_gamma=0.03),
        sft=dict(steps=400, batch_size=8, seq_len=256, lr=3e-4, eval_every=100, checkpoint_every=200,
                 bias_update_rule="proportional", bias_update_gamma=0.03),
        rl_problems=400,
        rl=dict(steps=90, prompts_per_step=8, group_size=8, max_new_tokens=160, temperature=0.7, loss_type="dr_grpo",
                lr=5e-5, batch_size=32, eval_every=30, checkpoint_every=30, eval_problems=60),
        minutes=dict(tasks=0.1, tokenizer=0.1, tokens=0.1, pretrain=12.3, eval_pretrain=0.25, sft=1.7, eval_sft=0.4,
                     rl=2.0, eval_rl=0.45, report=0.3)),
    "smoke": Preset(
        "a tiny model and a few steps of each stage: checks the pipeline end to end in a minute or two",
        model="tiny", model_overrides=dict(max_position_embeddings=256), tasks="arithmetic,sort", difficulty="1",
        corpus_problems=80, drills=10, vocab_size=400,
        pretrain=dict(steps=8, batch_size=4, seq_len=64, eval_every=4, checkpoint_every=4, eval_batches=2),
        sft_problems=60, sft=dict(steps=6, batch_size=4, seq_len=128, eval_every=3, checkpoint_every=3),
        rl_problems=8, rl=dict(steps=4, prompts_per_step=2, group_size=4, max_new_tokens=12, batch_size=8,
                               eval_every=2, checkpoint_every=2, eval_problems=4),
        eval_problems=6, heldout_problems=3, probe_problems=2, eval_max_tokens=16,
        minutes=dict(tasks=0.05, tokenizer=0.05, tokens=0.05, pretrain=0.2, eval_pretrain=0.05, sft=0.2,
                     eval_sft=0.05, rl=0.3, eval_rl=0.05, report=0.1)),
    "gpu": Preset(
        "gpu-0.5b (DeepSeek's 512 + 64 latent, servable by vLLM/SGLang MLA kernels) on one GPU; bring a "
        "corpus with --data for pretraining worth the name",
        model="gpu-0.5b", corpus_problems=200_000, vocab_size=32768, max_digits=3, difficulty="1-5",
        pretrain=dict(steps=20_000, batch_size=32, seq_len=2048, lr=3e-3, eval_every=1000, checkpoint_every=1000),
        sft_problems=20_000, sft=dict(steps=2000, batch_size=32, seq_len=1024, lr=3e-4),
        rl_problems=20_000, rl=dict(steps=500, prompts_per_step=64, group_size=16, max_new_tokens=512, lr=1e-6,
                                    batch_size=64, eval_problems=256),
        eval_problems=200, eval_max_tokens=512,
        minutes=dict(tasks=3, tokenizer=3, tokens=3, pretrain=600, eval_pretrain=5, sft=60, eval_sft=5, rl=240,
                     eval_rl=5, report=1)),
    "gpu-8": Preset(
        "gpu-3b (DeepSeek's latent shape) on 8 GPUs under torchrun (FSDP2); bring a corpus with --data",
        model="gpu-3b", corpus_problems=400_000, vocab_size=32768, max_digits=3, difficulty="1-6", gpus=8,
        pretrain=dict(steps=40_000, batch_size=16, seq_len=4096, lr=2e-3, parallel="fsdp", eval_every=2000,
                      checkpoint_every=2000),
        sft_problems=50_000, sft=dict(steps=3000, batch_size=16, seq_len=2048, lr=2e-4, parallel="fsdp"),
        rl_problems=40_000, rl=dict(steps=1000, prompts_per_step=128, group_size=16, max_new_tokens=1024, lr=1e-6,
                                    batch_size=32, parallel="fsdp", eval_problems=512),
        eval_problems=500, eval_max_tokens=1024,
        minutes=dict(tasks=5, tokenizer=5, tokens=5, pretrain=1440, eval_pretrain=10, sft=90, eval_sft=10, rl=480,
                     eval_rl=10, report=2)),
}


# ---- the run's state -------------------------------------------------------------------------------------
class State:
    """RUN/speedrun.json: the preset, and per stage whether it is done and how long it took."""

    def __init__(self, run: Path, preset_name: str, preset: Preset, data: list[str] | None):
        self.path, self.preset = run / "speedrun.json", preset
        settings = {"name": preset_name, **asdict(preset), "data": data}
        if self.path.is_file():
            try:
                self.doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{self.path} is not valid JSON ({e}); delete it to start the run over") from None
            bad = state_problem(self.doc)
            if bad:
                raise UserError(f"{self.path} is not a speedrun state ({bad}); delete it to start the run over")
            old = self.doc["preset"]
            if (old.get("name"), old.get("data")) != (preset_name, data):
                raise UserError(f"{run} holds a speedrun with preset {old.get('name')!r}"
                                f"{' on --data ' + str(old.get('data')) if old.get('data') else ''}; continue it "
                                "with the same --preset and --data, or choose a new RUN directory")
        else:
            self.doc = {"format_version": FORMAT_VERSION, "preset": settings, "stages": {},
                        "started": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine()}

    def done(self, stage: str) -> bool:
        return bool(self.doc["stages"].get(stage, {}).get("done"))

    def finish(self, stage: str, seconds: float, **extra: Any) -> None:
        entry = self.doc["stages"].setdefault(stage, {"seconds": 0.0})
        entry.update(done=True, seconds=entry.get("seconds", 0.0) + seconds, **extra)
        self.save()

    def add_time(self, stage: str, seconds: float) -> None:
        """An interrupted stage's time so far (a resumed stage adds to it)."""
        entry = self.doc["stages"].setdefault(stage, {"seconds": 0.0, "done": False})
        entry["seconds"] = entry.get("seconds", 0.0) + seconds
        self.save()

    def progress_line(self, stage: str, order: Sequence[str], session_s: float) -> str:
        """The line that opens a stage: its place, and the minutes left at this machine's pace so far."""
        i, minutes = order.index(stage), [self.preset.stage_minutes(s) for s in order]
        left = sum(m for s, m in zip(order[i:], minutes[i:]) if not self.done(s))
        spent = sum(self.doc["stages"].get(s, {}).get("seconds", 0.0) for s in order[:i]) / 60
        planned = sum(minutes[:i])
        pace = spent / planned if planned > 0.5 else 1.0  # this machine's speed against the preset's estimate
        return (f"\n=== speedrun {self.doc['preset']['name']}: stage {i + 1}/{len(order)} {stage} — about "
                f"{left * pace:.0f} min left of ~{sum(minutes) * pace:.0f} ({session_s:.0f}s in this session) ===")

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.doc, indent=2) + "\n")


def state_problem(doc: Any) -> str | None:
    """What is wrong with the shape of a speedrun.json document (None when the command can read it)."""
    if not isinstance(doc, dict):
        return f"a JSON object was expected, not {type(doc).__name__}"
    version = doc.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        return f"format_version {version!r}; this nanoseek reads version {FORMAT_VERSION}"
    preset = doc.get("preset")
    if not isinstance(preset, dict) or not isinstance(preset.get("name"), str):
        return '"preset" must be an object with a "name"'
    data = preset.get("data")
    if data is not None and not (isinstance(data, list) and all(isinstance(d, str) for d in data)):
        return '"preset"."data" must be a list of paths or null'
    stages = doc.get("stages")
    if not isinstance(stages, dict):
        return '"stages" must be an object of stage -> {"done", "seconds"}'
    for name, entry in stages.items():
        if not isinstance(entry, dict):
            return f'stage "{name}" must be an object with "done" and "seconds"'
        if not isinstance(entry.get("done", False), bool):
            return f'stage "{name}": "done" must be true or false, got {json.dumps(entry["done"])[:40]}'
        seconds = entry.get("seconds", 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
            return f'stage "{name}": "seconds" must be a number >= 0, got {json.dumps(seconds)[:40]}'
    return None


def machine() -> dict[str, Any]:
    """What the run ran on (every figure in the report needs it)."""
    cpu, amx = platform.processor() or platform.machine(), False
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in info.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
        amx = "amx_bf16" in info
    except (OSError, subprocess.SubprocessError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "amx_bf16": amx, "threads": torch.get_num_threads(), "device": "cuda" if gpu else "cpu",
            "gpu": gpu, "torch": torch.__version__}


def stages(also: Sequence[str] = ()) -> tuple[str, ...]:
    """The speedrun's stages in order with those `--also` adds (names of ALSO) before the report."""
    unknown = [a for a in also if a not in ALSO]
    if unknown:
        raise UserError(f"--also {unknown[0]}: not a run the speedrun adds; choose from {', '.join(ALSO)}",
                        param="--also")
    return STAGES[:-1] + tuple(s for name, extra in ALSO.items() if name in also for s in extra) + STAGES[-1:]


def evaluated_model(stage: str) -> str:
    """The training stage whose model an evaluation stage's name ("sft", "rl_pass8") evaluates."""
    return stage.removesuffix("_pass8")


def run_paths(run: Path) -> dict[str, Path]:
    """Where a run folder keeps each of its inputs."""
    data = run / "data"
    return {"corpus": data / "corpus.txt", "sft": data / "sft.jsonl", "rl": data / "rl.jsonl",
            "val": data / "val.jsonl", "test": data / "test.jsonl", "heldout": data / "test_heldout_wordings.jsonl",
            "probe": data / "probe.jsonl", "tok": run / "tokenizer", "tokens": run / "tokens"}


def stage_command(stage: str, preset: Preset, run: Path, *, data: list[str] | None = None, resume: bool = False,
                  **changes: Any) -> list[str]:
    """The `nanoseek` command line (without the program name) that runs a stage as the speedrun does:
    "tokenizer", "tokens", "pretrain", "sft" or "rl". data: the user's own pretraining corpus; resume: continue
    the stage's run in RUN/STAGE; changes: settings of a training stage that replace the preset's (steps=...)."""
    paths = run_paths(run)
    if stage == "tokenizer":
        return ["tokenizer", "train", "--input", str(paths["corpus"]), *(data or []), "--vocab-size",
                str(preset.vocab_size), "--max-digits", str(preset.max_digits), "--output", str(paths["tok"]),
                "--text-unit", "paragraph"]
    if stage == "tokens":
        return ["data", "prepare", "--input", *(data or [str(paths["corpus"])]), "--tokenizer", str(paths["tok"]),
                "--output", str(paths["tokens"]), "--text-unit", "paragraph"]
    argv = [stage, "--out", str(run / stage)]
    if stage == "pretrain":
        argv += ["--data", str(paths["tokens"]), "--preset", preset.model, "--eval-problems-file",
                 str(paths["probe"])]
        if not resume:  # a resumed run keeps its model
            argv += [f"--model={k}={json.dumps(v)}" for k, v in preset.model_overrides.items()]
    elif stage == "sft":
        argv += ["--checkpoint", str(run / "pretrain"), "--data", str(paths["sft"]), "--eval-problems-file",
                 str(paths["probe"])]
    elif stage in RL_RUNS:
        start, _ = RL_RUNS[stage]
        argv[0] = "rl"
        argv += ["--checkpoint", str(run / start), "--problems", str(paths["rl"]), "--eval-problems-file",
                 str(paths["val"])]
    else:
        raise ValueError(f"no command runs stage {stage!r}")
    argv += ["--resume"] if resume else []
    own = {"pretrain": preset.pretrain, "sft": preset.sft}.get(stage) or {**preset.rl, **RL_RUNS[stage][1]}
    flags = {**own, **changes}
    for k, v in flags.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def write_tasks(preset: Preset, paths: dict[str, Path]) -> None:
    """Every problem file of the run. Training data asks each problem in one of the tasks' training wordings;
    the test set asks held-out problems in those wordings, the held-out set in wordings kept out of training."""
    names = tasks.generated_tasks() if preset.tasks == "all" else preset.tasks.split(",")
    corpus, sft, rl, val, test, heldout, probe = [], [], [], [], [], [], []
    n_val = -(-preset.rl.get("eval_problems", 64) // len(names))
    for name in names:
        levels = _levels(name, preset.difficulty)
        n_corpus = round(preset.corpus_problems * preset.corpus_mix.get(name, 1.0))
        corpus += tasks.generate(name, "train", n_corpus, levels, seed=0, unique=False, wording="train")
        sft += tasks.generate(name, "train", preset.sft_problems, levels, seed=1, unique=False, wording="train")
        rl += tasks.generate(name, "train", preset.rl_problems, levels, seed=2, unique=False, wording="train")
        val += tasks.generate_up_to(name, "val", n_val, levels, wording="train")
        task_test = tasks.generate_up_to(name, "test", preset.eval_problems, levels, wording="train")
        test += task_test
        probe += task_test[:preset.probe_problems]
        heldout += tasks.generate_up_to(name, "test", preset.heldout_problems, levels, seed=1, wording="heldout")
    # one problem per document, with the drills, shuffled: the tasks interleave through the text (the loader
    # shuffles windows, not documents)
    corpus_ways = strategies.assign(corpus, preset.corpus_strategies)
    docs = [tasks.render_text(p, "plain", how) for p, how in zip(corpus, corpus_ways)]
    docs += tasks.drill_documents(preset.drills, seed=0)
    random.Random(0).shuffle(docs)
    tasks.write_documents(docs, paths["corpus"])
    tasks.write_sft(sft, paths["sft"], follow_ups=preset.sft_follow_ups, strategies=preset.sft_strategies)
    # what the report quotes, and the held-out problems checked against everything trained on, in code
    tasks.check_disjoint({"pretraining": corpus, "SFT": sft, "RL": rl}, {"test": test, "held-out wordings": heldout})
    for key, problems in (("rl", rl), ("val", val), ("test", test), ("heldout", heldout), ("probe", probe)):
        tasks.write_problems(problems, paths[key])
    print(f"wrote {len(corpus):,} pretraining problems and {preset.drills:,} fact drills, {len(sft):,} SFT "
          f"conversations, {len(rl):,} RL prompts, "
          f"{len(val):,} validation, {len(test):,} test problems and {len(heldout):,} asked in wordings kept out of "
          f"training ({', '.join(names)}, difficulty {preset.difficulty}; the splits never share a problem); "
          f"solutions: pretraining {strategies.describe(strategies.shares(corpus_ways))}, SFT "
          f"{strategies.summary(sft, preset.sft_strategies)}")


def _levels(task: str, difficulty: str) -> str:
    """The preset's levels, cut to those the task has."""
    top = tasks.get_task(task).max_difficulty
    levels = [d for d in tasks.parse_difficulty(difficulty) if d <= top] or [top]
    return ",".join(map(str, levels))


def evaluate_stage(stage: str, preset: Preset, run: Path, paths: dict[str, Path]) -> None:
    """Held-out test accuracy of a stage's model: the pretrained model and R1-Zero in their plain format, the
    others in the chat template; SFT and RL also on questions worded as training never worded them. Results
    (with every completion) in RUN/eval/STAGE.json (and STAGE_heldout_wordings.json) and a table in STAGE.md.
    STAGE_pass8 (sft_pass8, rl_pass8): PASS_AT answers per test problem at temperature 1, no completions kept."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = evaluated_model(stage)
    style = "plain" if model in PLAIN_STAGES else "chat"
    sets = [(stage, paths["test"], "")] + \
        ([(f"{stage}_heldout_wordings", paths["heldout"], ", in wordings kept out of training")]
         if stage in ("sft", "rl") else [])
    sampled = stage != model
    how = dict(samples=PASS_AT, k=(1, PASS_AT), temperature=1.0) if sampled else {}
    out = run / "eval"
    engine = Engine.load(run / model, dtype=dtype, device=device, max_batch=64)  # one load for both sets
    for name, path, what in sets:
        results = evaluate_tasks(engine, tasks.read_problems(path), max_new_tokens=preset.eval_max_tokens,
                                 style=style, keep_completions=not sampled, **how)
        results["checkpoint"] = str(resolve_checkpoint(run / model))
        atomic_write_text(out / f"{name}.json", to_json(results))
        text = results_markdown(results)
        atomic_write_text(out / f"{name}.md", text)
        s = results["summary"]
        print(f"{stage}: held-out accuracy {s['accuracy']:.1%} ± {s['accuracy_se']:.1%} on {s['problems']:,} problems "
              f"({style} prompts{what}" + (f"; pass@{PASS_AT} {s[f'pass@{PASS_AT}']:.1%}, maj@{PASS_AT} "
                                           f"{s[f'maj@{PASS_AT}']:.1%})" if sampled else ")"))
        print(text, end="")
