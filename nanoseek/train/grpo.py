"""GRPO: reinforcement learning with rule-checked rewards (DeepSeekMath; DeepSeek-R1), as a Task of the one
training loop (docs/post-training.md, "GRPO").

Every `updates_per_generation` optimizer steps, `begin_step` samples a group of G completions for each of
the step's prompts with the engine (the model's live weights, temperature 1 by default), scores them with the
rewards, and turns the scores into advantages relative to the group: A_i = (r_i - mean(r)) / (std(r) + eps)
(`dr_grpo`: without the division). It then computes the log-probabilities of the sampled tokens under the
current weights (the "old" policy) and, with a KL penalty, under the frozen reference. Each optimizer step
then minimizes the clipped surrogate over all of them, in micro-batches:

    per token: -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) + beta * KL3,   rho = pi / pi_old
    KL3 = pi_ref / pi - log(pi_ref / pi) - 1   (the k3 estimator: unbiased, never negative)

aggregated as `grpo` (each completion's token mean, then the mean over completions), `dr_grpo` (the token
sum over completions x max_new_tokens: no length bias) or `dapo` (one mean over every token of the step,
with the asymmetric clip eps_high = 0.28). With updates_per_generation > 1 the same rollouts serve several
steps; pi_old stays the policy that generated them, so the ratio and the clip do their work.

With `dynamic_sampling` N, groups whose rewards all agree (no signal) give their places to mixed groups of
further prompts, sampled in up to N more rounds (DAPO). `prompt_style` "plain" asks in the pretraining text's
format and reads its "Answer:" line, for RL straight from a base model (R1-Zero).

Rollouts are seeded by (seed, step, rank, request), so a run resumed from a checkpoint (always written at a
generation boundary) regenerates exactly what the uninterrupted run did.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nanoseek.data.tasks import prompt_ids
from nanoseek.data.tasks.strategies import shares, strategy_of
from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.cache import LatentPool
from nanoseek.engine.sampling import GREEDY_BELOW
from nanoseek.errors import DataError
from nanoseek.model import DeepSeekV3
from nanoseek.model.layers import compute_dtype
from nanoseek.model.loss import linear_logprobs
from nanoseek.train import distributed as D
from nanoseek.train.config import TrainConfig, _f
from nanoseek.train.loop import Task
from nanoseek.train.rewards import REWARDS_BY_STYLE, Rewards, reasoning_of
from nanoseek.train.schedule import SCHEDULES

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
STATE_VERSION = 1  # of the task state a checkpoint keeps


@dataclass
class GRPOConfig(TrainConfig):
    # ---- RL's own defaults for the shared settings ----
    steps: int = _f(200, "optimizer steps to train for (the schedule spans them)")
    lr: float = _f(1e-4, "peak learning rate (RL moves a trained model: far below pretraining's)")
    schedule: str = _f("constant", "lr schedule: constant (after the warm-up), wsd, cosine", SCHEDULES)
    batch_size: int = _f(16, "completions per micro-batch on each process (the micro-batches of a step cover "
                             "all of its completions)")
    eval_every: int = _f(25, "evaluate (greedy validation accuracy) every N steps and at the end (0: only at the end)")
    checkpoint_every: int = _f(50, "write a checkpoint every N steps and at the end (0: only at the end)")
    aux_loss_alpha: float = _f(0.0, "alpha: sequence-wise balance loss weight (off in RL; the bias update goes on)")
    # ---- the task ----
    task: str = _f("countdown", "built-in task to train on (nanoseek tasks list); ignored with --problems")
    problems: str | None = _f(None, "JSONL of {prompt, answer[, checker]} problems to train on instead of a "
                                    "built-in task (and --eval-problems-file for evaluation)")
    difficulty: str = _f("1", "difficulty level(s) of the built-in task: 2, 1-3 or 1,2,4")
    reward: str = _f("accuracy=1,format=0.1", "weighted rewards: accuracy, format, random (the control run: "
                                              "--reward random)")
    # ---- rollouts ----
    prompts_per_step: int = _f(8, "prompts per generation batch, over all processes")
    group_size: int = _f(8, "G: completions sampled per prompt (the advantage baseline is their mean)")
    updates_per_generation: int = _f(1, "optimizer steps on each generation batch (> 1: the clipped ratio matters)")
    temperature: float = _f(1.0, "sampling temperature of the rollouts (and of the policy's log-probabilities)")
    top_p: float = _f(1.0, "nucleus sampling of the rollouts (1: off, keeps the policy exact)")
    max_new_tokens: int = _f(128, "completion length limit; longer completions are cut (and counted as truncated)")
    # ---- the objective ----
    loss_type: str = _f("grpo", "grpo (sequence mean), dr_grpo (constant normalizer, no std scaling), dapo "
                                "(token mean, asymmetric clip)", LOSS_TYPES)
    clip_eps: float = _f(0.2, "epsilon: the ratio is clipped to [1 - eps, 1 + eps_high]")
    clip_eps_high: float | None = _f(None, "upper clip (default: clip_eps; dapo: 0.28)")
    beta: float = _f(0.0, "KL penalty to the frozen starting model (k3); 0 keeps no reference model")
    eval_problems: int = _f(64, "validation problems scored (greedy) at each evaluation")
    prompt_style: str = _f("chat", "chat: ask in the chat template, answers as <think>...</think>answer (after SFT); "
                                   "plain: the bare prompt line, answers as steps then 'Answer: X' (the pretraining "
                                   "text's format: RL straight from a base model, R1-Zero)", ("chat", "plain"))
    dynamic_sampling: int = _f(0, "DAPO's dynamic sampling: up to N more rounds of prompts per generation replace "
                                  "groups whose rewards all agree (they carry no signal); 0: off")

    # --problems may name another path (a copied run folder): the task state compares the problems themselves
    FIXED_ON_RESUME = ("optimizer", "seed", "task", "difficulty", "prompts_per_step", "group_size", "prompt_style",
                       "updates_per_generation")

    def validate(self) -> "GRPOConfig":
        super().validate()

        def need(cond: bool, flag: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"--{flag.replace('_', '-')} {msg}")

        for name in ("prompts_per_step", "group_size", "updates_per_generation", "max_new_tokens", "eval_problems"):
            need(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        need(self.dynamic_sampling >= 0, "dynamic_sampling", f"must be >= 0, got {self.dynamic_sampling}")
        need(self.group_size >= 2, "group_size", f"must be >= 2 (advantages compare a group), got {self.group_size}")
        need(self.temperature >= GREEDY_BELOW, "temperature",
             f"must be at least {GREEDY_BELOW:g}: rollouts are sampled, and below that sampling is greedy (a group of "
             f"identical completions), got {self.temperature}")
        need(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        need(0 < self.clip_eps < 1, "clip_eps", f"must be in (0, 1), got {self.clip_eps}")
        need(self.clip_eps_high is None or self.clip_eps_high > 0, "clip_eps_high",
             f"must be > 0, got {self.clip_eps_high}")
        need(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        u = self.updates_per_generation
        # checkpoints fall on generation boundaries, so a resumed run regenerates exactly the same rollouts
        need(self.steps % u == 0, "steps", f"({self.steps}) must be a multiple of --updates-per-generation ({u})")
        need(self.checkpoint_every % u == 0, "checkpoint_every",
             f"({self.checkpoint_every}) must be a multiple of --updates-per-generation ({u})")
        return self

    def completions_per_rank(self, world_size: int) -> int:
        """Completions each process samples and trains on per generation."""
        return self.prompts_per_step // world_size * self.group_size

    def micro_batches(self, world_size: int) -> int:
        """The grad_accum a GRPO run takes: every completion of a step, in micro-batches of batch_size (set it
        when building the config, once the number of processes is known)."""
        return math.ceil(self.completions_per_rank(world_size) / self.batch_size)

    @property
    def eps_high(self) -> float:
        if self.clip_eps_high is not None:
            return self.clip_eps_high
        return 0.28 if self.loss_type == "dapo" else self.clip_eps


# ---- the math, as plain functions ---------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards [groups, G] -> advantages [groups, G]: the reward minus its group's mean, divided by the group's
    standard deviation (+ eps) when scale (GRPO) or not (Dr. GRPO). A group whose rewards are all equal gets
    zeros: it carries no signal about which completion was better."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    # exact zeros for a group of equal rewards: its mean is rounded (eight times 0.1 averages to 0.1 - 7e-9)
    same = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    if scale:
        centered = centered / (rewards.std(dim=1, keepdim=True, unbiased=True) + eps)
    return torch.where(same, torch.zeros_like(centered), centered)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate from samples of pi: r - log r - 1 with r = pi_ref / pi (Schulman's
    k3: unbiased, never negative, low variance)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate loss -min(rho A, clip(rho) A) and where the clip was active (bool)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, norm: float, max_new_tokens: int
              ) -> torch.Tensor:
    """The sum this micro-batch contributes to the step's loss (divide by norm, the step-level normalizer:
    grpo: the number of completions, dr_grpo: completions x max_new_tokens, dapo: completion tokens).
    per_token, mask [B, T]."""
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(1) / mask.sum(1).clamp(min=1)).sum() / norm
    return masked.sum() / norm


@dataclass
class PolicyOutput:
    """What the policy's forward gives the loss, and the loss gives the training loop."""
    token_logprobs: torch.Tensor  # [B, T] log pi(target) per position (0 where the target is masked)
    token_entropy: torch.Tensor  # [B, T] entropy of the next-token distribution
    balance_loss: torch.Tensor | None = None  # training mode with aux_loss_alpha > 0
    expert_counts: torch.Tensor | None = None  # [n_routers, E]
    loss: torch.Tensor | None = None  # set by GRPOTask.loss, as are the two below
    metrics: dict | None = None
    tokens: int | None = None


def policy_logprobs(model: DeepSeekV3, x: torch.Tensor, y: torch.Tensor, temperature: float) -> PolicyOutput:
    """Log-probabilities of the targets y under the policy at `temperature` (logits / temperature, as a sampler
    at that temperature draws from), and the entropies, chunked through the output head so the full logits are
    never formed. Run it through `D.call_as_forward`: it reads the head's weight, which FSDP gathers only
    around a forward."""
    out = model.hidden_states(x)
    h = out.hidden
    scaled = h if temperature == 1.0 else h / temperature  # (h / t) W^T = logits / t
    lp, entropy = linear_logprobs(scaled, model.lm_head.weight, y, compute_dtype(h))
    return PolicyOutput(lp, entropy, out.balance_loss, out.expert_counts)


# ---- rollouts -------------------------------------------------------------------------------------------------
@dataclass
class Group:
    """One prompt's G sampled completions with their rewards (total) and whether each answer was right."""
    prompt: list[int]
    problem: Any
    outs: list
    scores: list[dict[str, float]]
    rewards: list[float]
    right: list[float]


def _mixed(group: Group) -> bool:
    """Whether a group's rewards differ (only then do its advantages carry a signal)."""
    return len(set(group.rewards)) > 1


@dataclass
class Rollout:
    ids: list[int]  # prompt + completion
    prompt_len: int
    advantage: float
    old_logp: torch.Tensor | None = None  # [completion tokens]
    ref_logp: torch.Tensor | None = None
    engine_logp: list[float] | None = None


class GRPOTask(Task):
    progress_metrics = ("reward",)

    def __init__(self, cfg: GRPOConfig, tokenizer, train_problems: list, eval_problems: list, *,
                 device: torch.device, rank: int = 0, world_size: int = 1, reference: nn.Module | None = None,
                 rewards=None):
        self.cfg, self.tok, self.device, self.rank, self.world = cfg, tokenizer, device, rank, world_size
        self.train_problems, self.eval_problems = train_problems, eval_problems
        if cfg.prompts_per_step % world_size:
            raise ValueError(f"--prompts-per-step ({cfg.prompts_per_step}) must be a multiple of the number of "
                             f"processes ({world_size}): each generates its share")
        if cfg.grad_accum != cfg.micro_batches(world_size):
            raise ValueError(f"--grad-accum is {cfg.grad_accum}, but GRPO trains every completion of a step in "
                             f"{cfg.micro_batches(world_size)} micro-batch(es) of --batch-size: set "
                             "cfg.grad_accum = cfg.micro_batches(world_size) when building the config")
        self.rewards = rewards or Rewards(cfg.reward, seed=cfg.seed, style=cfg.prompt_style)
        self.accuracy = REWARDS_BY_STYLE[cfg.prompt_style]["accuracy"]  # logged also when the reward ignores it
        self.n_seq = cfg.completions_per_rank(world_size)
        self.tokens_per_batch = None  # completions vary in length: each micro-batch counts its own
        self.reference = reference
        self.engine = None
        self.rollouts: list[Rollout] = []  # this generation's completions
        self.trained: list[Rollout] = []  # the ones the optimizer steps train on (see _to_train)
        self.micro: list[list[Rollout]] = []
        self.norm = 1.0
        self.fresh = False

    # ---- the step hook: generate, score, compute advantages and the old policy's log-probabilities ------
    def begin_step(self, model: nn.Module, step: int) -> dict[str, float] | None:
        cfg = self.cfg
        metrics = None
        # the first update on a generation's rollouts measures how far the engine's log-probabilities are
        self.fresh = (step - 1) % cfg.updates_per_generation == 0
        if self.fresh:
            metrics = self._generate(model, (step - 1) // cfg.updates_per_generation)
        self.micro = spread(self.trained, cfg.grad_accum)
        return metrics

    def _engine(self, model: nn.Module):
        if self.engine is None:
            # every prompt a step may draw must fit (a sample of the first few missed a task's longer prompts
            # further down a mixed problems file)
            longest = max(len(self._prompt_ids(p)) for p in self.train_problems + self.eval_problems)
            max_len = min(model.config.max_position_embeddings, longest + 8 + self.cfg.max_new_tokens)
            rows = max(self.n_seq, len(self.eval_problems))
            budget = LatentPool.row_bytes(model.config, max_len, torch.float32) * (rows + 8)
            self.engine = Engine(model, self.tok, max_batch=rows, max_len=max_len, cache_memory=budget)
        return self.engine

    def _prompt_ids(self, problem) -> list[int]:
        return prompt_ids(problem, self.tok, self.cfg.prompt_style)

    def _params(self, **kw) -> SamplingParams:
        """Sampling settings; a plain-style answer ends where the pretraining text's document would (a blank
        line or the next <|bos|>), as evaluation's does."""
        if self.cfg.prompt_style == "plain":
            bos = getattr(self.tok, "bos_id", None)
            kw.update(stop=["\n\n"], stop_token_ids=[bos] if bos is not None else [])
        return SamplingParams(skip_special_tokens=False, **kw)

    def _problems_for(self, generation: int) -> list:
        """This rank's prompts of generation batch `generation`: a fixed shuffle of the training problems per
        epoch, read in order, split across ranks."""
        cfg, pool = self.cfg, self.train_problems
        start = generation * cfg.prompts_per_step + self.rank * (cfg.prompts_per_step // self.world)
        out = []
        for i in range(start, start + cfg.prompts_per_step // self.world):
            epoch, j = divmod(i, len(pool))
            order = list(range(len(pool)))
            random.Random(f"{cfg.seed}|epoch{epoch}").shuffle(order)
            out.append(pool[order[j]])
        return out

    @torch.no_grad()
    def _generate(self, model: nn.Module, generation: int) -> dict[str, float]:
        cfg = self.cfg
        G = cfg.group_size
        groups = self._sample_groups(model, self._problems_for(generation), generation, 0)
        # what the policy does, measured on the first round (refills are chosen for their mixed rewards)
        m = self._rollout_metrics(groups)
        if cfg.dynamic_sampling:
            groups, m["sampling_rounds"] = self._refill(model, groups, generation)
            m["informative_groups"] = sum(_mixed(g) for g in groups) / len(groups)
        prompts = [g.prompt for g in groups]
        outs = [o for g in groups for o in g.outs]
        total = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float32).view(-1, G)
        adv = group_advantages(total, scale=cfg.loss_type != "dr_grpo").view(-1)
        self.rollouts = [Rollout(prompts[i // G] + o.token_ids, len(prompts[i // G]), float(adv[i]),
                                 engine_logp=[t.logprob for t in o.logprobs]) for i, o in enumerate(outs)]
        self.trained = self._to_train()
        # With one update per generation the policy being trained is the one that sampled: pi_old = pi, so the
        # loss takes pi_old from its own forward (detached) instead of a second forward over every rollout.
        self._score_old_policy(model, policy=cfg.updates_per_generation > 1)
        # the step's normalizer, over all ranks
        n_tokens = sum(len(r.ids) - r.prompt_len for r in self.rollouts)
        n = D.all_reduce_sum(torch.tensor([len(self.rollouts), n_tokens], dtype=torch.float64, device=self.device))
        self.norm = {"grpo": n[0].item(), "dr_grpo": n[0].item() * cfg.max_new_tokens, "dapo": n[1].item()}[cfg.loss_type]
        m["trained_fraction"] = len(self.trained) / len(self.rollouts)
        return m

    def _sample_groups(self, model: nn.Module, problems: list, generation: int, round_: int) -> list["Group"]:
        """A group of G scored completions for each problem. Seeded by the prompt's place in the whole batch, so
        any number of processes samples the same completions (round 0 keeps the seeds it always had)."""
        cfg, G = self.cfg, self.cfg.group_size
        prompts = [self._prompt_ids(p) for p in problems]
        first = self.rank * len(prompts)  # this rank's first prompt in the generation batch
        # ints only: hash() of a str differs between processes, and a resumed run must draw the same seeds
        where = (generation,) if round_ == 0 else (generation, -round_)
        params = [self._params(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                               seed=hash((cfg.seed, *where, first + i // G, i % G)) & (2**63 - 1), logprobs=0)
                  for i in range(len(prompts) * G)]
        with D.full_weights(model):  # FSDP: the engine needs whole weights; DDP/one process: a no-op
            outs = self._engine(model).generate([p for p in prompts for _ in range(G)], params)
        groups = []
        for j, (prompt, problem) in enumerate(zip(prompts, problems)):
            mine = outs[j * G:(j + 1) * G]
            text = self.tok.decode(prompt)
            scores = [self.rewards.scores(text, o.text, problem) for o in mine]
            right = [s["accuracy"] if "accuracy" in s else self.accuracy("", o.text, problem)
                     for s, o in zip(scores, mine)]
            groups.append(Group(prompt, problem, mine, scores, [s["reward"] for s in scores], right))
        return groups

    def _refill(self, model: nn.Module, groups: list["Group"], generation: int) -> tuple[list["Group"], int]:
        """DAPO's dynamic sampling: groups whose rewards all agree carry no signal, so up to `dynamic_sampling`
        more rounds of other training prompts are sampled and their mixed groups take those places. Every rank
        runs the same rounds (the engine may gather FSDP weights). Returns the groups and the rounds run."""
        cfg, need = self.cfg, len(groups)
        mixed = [g for g in groups if _mixed(g)]
        rounds = 0
        while rounds < cfg.dynamic_sampling:
            short = D.all_reduce_sum(torch.tensor([float(len(mixed) < need)], device=self.device)).item()
            if not short:
                break
            rounds += 1
            rng = random.Random(f"{cfg.seed}|refill|{generation}|{rounds}|{self.rank}")
            extra = [self.train_problems[rng.randrange(len(self.train_problems))] for _ in range(need)]
            mixed += [g for g in self._sample_groups(model, extra, generation, rounds) if _mixed(g)]
        # the places no mixed group filled keep first-round groups (advantage 0: they train nothing)
        return (mixed + [g for g in groups if not _mixed(g)])[:need], rounds

    def _rollout_metrics(self, groups: list["Group"]) -> dict[str, float]:
        """Rewards, lengths (of right and of wrong answers), truncation and the strategies the completions used."""
        outs = [o for g in groups for o in g.outs]
        scores = [s for g in groups for s in g.scores]
        right = [r for g in groups for r in g.right]
        total = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float32).view(len(groups), -1)
        lengths = [len(o.token_ids) for o in outs]
        m = {f"reward_{k}": sum(s[k] for s in scores) / len(scores) for k in scores[0] if k != "reward"}
        m.update(reward=float(total.mean()), reward_std=float(total.std(dim=1).mean()),
                 zero_variance_groups=float((total.std(dim=1) == 0).float().mean()),
                 completion_len=sum(lengths) / len(lengths), completion_len_max=float(max(lengths)),
                 truncated=sum(o.finish_reason == "length" for o in outs) / len(outs))
        m["reward_accuracy"] = sum(right) / len(right)  # also in the control run, whose reward ignores it
        for name, which in (("right", 1.0), ("wrong", 0.0)):
            picked = [n for n, r in zip(lengths, right) if r == which]
            if picked:
                m[f"completion_len_{name}"] = sum(picked) / len(picked)
        used = shares(strategy_of(reasoning_of(o.text, self.cfg.prompt_style)) for o in outs)
        m.update({f"strategy_{k}": v for k, v in used.items()})
        return m

    def _to_train(self) -> list[Rollout]:
        """The rollouts the optimizer steps see. Without a KL term or a balance loss, a completion with advantage
        0 adds exactly 0 to the loss and to its gradient (the step's normalizer still counts it), so only the
        others are trained: the groups whose completions all scored the same (often half of them) would cost a
        forward and a backward for nothing. Enough stay that no micro-batch is empty, so every rank runs the
        same micro-batches. (The router's load statistics then count the trained tokens only.)"""
        cfg = self.cfg
        if cfg.beta > 0 or cfg.aux_loss_alpha > 0:
            return list(self.rollouts)
        keep = [r for r in self.rollouts if r.advantage != 0.0]
        return keep + [r for r in self.rollouts if r.advantage == 0.0][:max(0, cfg.grad_accum - len(keep))]

    def _score_old_policy(self, model: nn.Module, policy: bool = True) -> None:
        """Log-probabilities of the trained completions' tokens under the current weights (pi_old; only with
        policy) and under the reference (with a KL term, which trains every completion)."""
        if not policy and self.reference is None:
            return
        was_training = model.training
        model.eval()
        try:
            for i in range(0, len(self.trained), self.cfg.batch_size):
                chunk = self.trained[i:i + self.cfg.batch_size]
                x, y, mask = self._tensors(chunk)
                with _autocast(self.device, self.cfg.dtype):
                    t = self.cfg.temperature
                    lp = D.call_as_forward(model, policy_logprobs, x, y, t).token_logprobs if policy else None
                    ref = (D.call_as_forward(self.reference, policy_logprobs, x, y, t).token_logprobs
                           if self.reference is not None else None)
                for b, r in enumerate(chunk):
                    sel = mask[b]
                    r.old_logp = lp[b][sel].float() if lp is not None else None
                    r.ref_logp = ref[b][sel].float() if ref is not None else None
        finally:
            model.train(was_training)

    def _tensors(self, chunk: list[Rollout]):
        """input ids, targets (completion tokens only; -100 elsewhere) and the completion mask, right-padded."""
        T = max(len(r.ids) for r in chunk) - 1
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        y = torch.full((len(chunk), T), -100, dtype=torch.long)
        for b, r in enumerate(chunk):
            ids = torch.tensor(r.ids)
            x[b, :len(ids) - 1] = ids[:-1]
            y[b, r.prompt_len - 1:len(ids) - 1] = ids[r.prompt_len:]
        x, y = x.to(self.device), y.to(self.device)
        return x, y, y != -100

    # ---- the loop's side -----------------------------------------------------------------------------------
    def next_batch(self, model: nn.Module):
        return self.micro.pop(0)

    def loss(self, model: nn.Module, chunk: list[Rollout], cfg: GRPOConfig) -> PolicyOutput:
        x, y, mask = self._tensors(chunk)
        out = D.call_as_forward(model, policy_logprobs, x, y, cfg.temperature)
        lp = out.token_logprobs
        adv = torch.tensor([r.advantage for r in chunk], device=lp.device)[:, None].expand_as(lp)
        metrics = {}
        fmask = mask.float()
        n_tok = fmask.sum().clamp(min=1)
        # one update per generation: pi_old is this very policy; else it was scored right after sampling
        old = lp.detach() if chunk[0].old_logp is None else _padded([r.old_logp for r in chunk], lp, mask)
        if self.fresh and cfg.temperature == 1.0:  # the engine reports raw log-probabilities: comparable at 1
            diff = (old - _padded([r.engine_logp for r in chunk], old, mask)).abs() * fmask
            metrics["logprob_mismatch"] = diff.sum() / n_tok
            metrics["logprob_mismatch_max"] = diff.max()
        per_token, clipped = surrogate(lp, old, adv, cfg.clip_eps, cfg.eps_high)
        if cfg.beta > 0:
            kl = kl_k3(lp, _padded([r.ref_logp for r in chunk], lp, mask))
            per_token = per_token + cfg.beta * kl
            metrics["kl"] = (kl.detach() * fmask).sum() / n_tok
        # the loop divides each micro-batch's loss by grad_accum and averages ranks: undo both, so that the
        # step's loss is exactly the aggregate over every completion of every rank
        scale = cfg.grad_accum * self.world
        out.loss = aggregate(per_token, fmask, cfg.loss_type, self.norm, cfg.max_new_tokens) * scale
        if out.balance_loss is not None:
            out.loss = out.loss + out.balance_loss
        metrics["clip_fraction"] = (clipped.float() * fmask).sum() / n_tok
        metrics["entropy"] = (out.token_entropy * fmask).sum() / n_tok
        out.metrics, out.tokens = metrics, int(mask.sum())
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, cfg: GRPOConfig) -> dict[str, float]:
        """Greedy accuracy on the validation problems (this rank's share; counts summed over ranks)."""
        mine = self.eval_problems[self.rank::self.world]
        right = 0.0
        if mine:
            p = self._params(max_new_tokens=cfg.max_new_tokens, temperature=0)
            with D.full_weights(model), torch.autocast(self.device.type, enabled=False):
                outs = self._engine(model).generate([self._prompt_ids(q) for q in mine], p)
            right = sum(self.accuracy("", o.text, q) for o, q in zip(outs, mine))
        n = D.all_reduce_sum(torch.tensor([right, float(len(mine))], dtype=torch.float64, device=self.device))
        return {"val_accuracy": n[0].item() / max(n[1].item(), 1.0)}

    def state_dict(self) -> dict[str, Any]:
        # The prompts and seeds of every generation follow from the step and the training problems. A built-in
        # task's follow from the settings (--steps may grow on resume, and the pool with it); a --problems file's
        # are kept by content, so a copied run folder with its problems file elsewhere resumes.
        return {"version": STATE_VERSION, "problems": self._digest(), "n_problems": len(self.train_problems),
                "source": self.cfg.problems or self.cfg.task}

    def _digest(self) -> str | None:
        return problems_digest(self.train_problems) if self.cfg.problems else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("problems")  # None: a built-in task's, or written before nanoseek kept it
        if saved is not None and saved != self._digest():
            raise DataError(f"the run was trained on other problems ({state.get('n_problems')} from "
                            f"{state.get('source')}; these are {len(self.train_problems)} from "
                            f"{self.cfg.problems or self.cfg.task}): resuming would not continue the same prompts; "
                            "pass the same --problems or start a new --out")


def problems_digest(problems: list) -> str:
    """A short hash of the problems' content, in order (what a saved generation step refers to)."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps(p.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def spread(items: list, parts: int) -> list[list]:
    """items in `parts` consecutive chunks whose sizes differ by at most one (none empty when len >= parts)."""
    q, r = divmod(len(items), parts)
    bounds = [i * q + min(i, r) for i in range(parts + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(parts)]


def frozen_copy(model: nn.Module) -> nn.Module:
    """The KL reference: a copy of the starting weights, in eval mode, without gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _padded(values: list, like: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-rollout values of the completion tokens (a list or tensor each) laid out like `like` [B, T], at the
    completion positions `mask` marks; zeros elsewhere."""
    out = torch.zeros_like(like)
    for b, v in enumerate(values):
        out[b][mask[b]] = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return out


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
