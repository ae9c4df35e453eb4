"""Task accuracy while training: the live weights answer a fixed set of held-out problems, greedily, through the
engine (the one generation path), and the loop logs the result with each evaluation.

    probe = AccuracyProbe(problems, tokenizer, style="plain", device=device)
    probe(model) -> {"task_accuracy": 0.42, "task_accuracy_arithmetic": 0.5, ...}

That gives held-out accuracy against training tokens without keeping every checkpoint: pretraining asks in the
plain style of its text, SFT in the chat template (nanoseek.data.tasks.prompt_ids). Under data parallelism each
rank answers its share and the counts are summed, so every rank returns the same figures.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nanoseek.data.tasks import Problem, prompt_ids
from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.cache import LatentPool
from nanoseek.train import distributed as D
from nanoseek.train.rewards import score


class AccuracyProbe:
    def __init__(self, problems: Sequence[Problem], tokenizer, *, style: str, device: torch.device,
                 max_new_tokens: int = 256, rank: int = 0, world_size: int = 1, max_batch: int = 64):
        self.problems, self.tok, self.style, self.device = list(problems), tokenizer, style, device
        self.max_new_tokens, self.max_batch = max_new_tokens, max_batch
        self.tasks = sorted({p.task for p in self.problems})
        self.mine = list(range(rank, len(self.problems), world_size))
        self.ids = [prompt_ids(self.problems[i], tokenizer, style) for i in self.mine]
        self.engine = None

    def _engine(self, model: nn.Module):
        if self.engine is None:
            longest = max((len(x) for x in self.ids), default=1)
            max_len = min(model.config.max_position_embeddings, longest + self.max_new_tokens + 8)
            rows = max(1, min(self.max_batch, len(self.ids)))
            budget = LatentPool.row_bytes(model.config, max_len, torch.float32) * (rows + 8)
            self.engine = Engine(model, self.tok, max_batch=rows, max_len=max_len, cache_memory=budget)
        return self.engine

    @torch.no_grad()
    def completions(self, model: nn.Module) -> list[str]:
        """The greedy completions (special tokens kept) of this rank's problems."""
        if not self.ids:
            return []
        stop_ids = [self.tok.bos_id] if self.style == "plain" and getattr(self.tok, "bos_id", None) is not None \
            else []
        context = model.config.max_position_embeddings  # a small model's answers stop where its context does
        params = [SamplingParams(max_new_tokens=max(1, min(self.max_new_tokens, context - len(ids))), temperature=0,
                                 skip_special_tokens=False, stop=["\n\n"] if self.style == "plain" else [],
                                 stop_token_ids=stop_ids) for ids in self.ids]
        with D.full_weights(model), torch.autocast(self.device.type, enabled=False):
            return [o.text for o in self._engine(model).generate(self.ids, params)]

    def __call__(self, model: nn.Module) -> dict[str, float]:
        right = torch.zeros(2 * len(self.tasks), dtype=torch.float64, device=self.device)  # right, asked per task
        for i, text in zip(self.mine, self.completions(model)):
            t = self.tasks.index(self.problems[i].task)
            right[2 * t] += score(self.problems[i], text, self.style)["correct"]
            right[2 * t + 1] += 1
        right = D.all_reduce_sum(right).tolist()
        out = {"task_accuracy": sum(right[0::2]) / max(sum(right[1::2]), 1.0)}
        if len(self.tasks) > 1:
            out.update({f"task_accuracy_{t}": right[2 * k] / max(right[2 * k + 1], 1.0)
                        for k, t in enumerate(self.tasks)})
        return out
