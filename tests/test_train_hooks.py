"""The loop's hooks for tasks beyond pretraining (SFT, RL): a per-step hook before the micro-batches, metrics
the loop averages and logs without knowing their names, tokens counted from the batches themselves, and
per-token log-probabilities through the output head in chunks (equal to a full-logits computation)."""

import torch
import torch.nn.functional as F

import nanoseek
from nanoseek.config import preset
from nanoseek.model.loss import linear_logprobs
from nanoseek.train.grpo import policy_logprobs
from nanoseek.train.config import TrainConfig
from nanoseek.train.log import read_log
from nanoseek.train.loop import Task, train


class VariableTask(Task):
    """Random token sequences whose micro-batches hold different numbers of trained tokens."""

    tokens_per_batch = 10  # an estimate: the real counts come with each loss

    def __init__(self):
        self.calls: list[tuple] = []
        self.g = torch.Generator().manual_seed(0)

    def begin_step(self, model, step):
        self.calls.append(("begin", step))
        return {"reward": float(step), "length_max": 3.0 * step}

    def next_batch(self, model):
        n = len([c for c in self.calls if c[0] == "batch"])
        self.calls.append(("batch", n))
        x = torch.randint(0, 256, (2, 9), generator=self.g)
        y = x.roll(-1, 1)
        y[:, : 1 + n % 4] = -100  # micro-batch n trains on 2 * (8 - n % 4) tokens
        return x, y

    def loss(self, model, batch, cfg):
        x, y = batch
        out = model(x, targets=y)
        out.tokens = int((y != -100).sum())
        n = len([c for c in self.calls if c[0] == "batch"]) - 1
        out.metrics = {"kl": torch.tensor(float(out.tokens)), "clip_frac": 0.5, "ratio_max": float(10 - n),
                       "ratio_min": float(n)}
        return out

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_begin_step_metrics_and_tokens_from_batches(tmp_path):
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("tiny", num_nextn_predict_layers=0))
    task = VariableTask()
    cfg = TrainConfig(steps=3, grad_accum=2, batch_size=2, seq_len=9, eval_every=0, checkpoint_every=0,
                      dtype="float32", peak_flops=1e12)
    train(model, task, cfg, tmp_path / "run", progress=False, announce=lambda *_: None)
    # begin_step once per step, before that step's micro-batches
    assert [c for c in task.calls if c[0] == "begin"] == [("begin", s) for s in (1, 2, 3)]
    assert [c[0] for c in task.calls] == ["begin", "batch", "batch"] * 3
    recs = [r for r in read_log(tmp_path / "run") if r["event"] == "train"]
    per_micro = [2 * (8 - n % 4) for n in range(6)]
    step_tokens = [per_micro[0] + per_micro[1], per_micro[2] + per_micro[3], per_micro[4] + per_micro[5]]
    assert [r["tokens"] for r in recs] == [sum(step_tokens[:i + 1]) for i in range(3)]  # counted, cumulative
    assert [r["reward"] for r in recs] == [1.0, 2.0, 3.0] and [r["length_max"] for r in recs] == [3.0, 6.0, 9.0]
    assert [r["kl"] for r in recs] == [t / 2 for t in step_tokens]  # averaged over the 2 micro-batches
    assert all(r["clip_frac"] == 0.5 for r in recs)
    # a loss's *_max / *_min metrics are the step's max / min over its micro-batches, not their sum
    assert [r["ratio_max"] for r in recs] == [10.0, 8.0, 6.0] and [r["ratio_min"] for r in recs] == [0.0, 2.0, 4.0]


def test_chunked_token_logprobs_equal_full_logits_and_their_gradients():
    torch.manual_seed(0)
    model = nanoseek.DeepSeekV3(preset("tiny", num_nextn_predict_layers=0))
    ids = torch.randint(0, 256, (3, 12))
    targets = ids.roll(-1, 1)
    targets[0, :4] = -100
    out = policy_logprobs(model, ids, targets, 1.0)  # as GRPO calls it
    assert out.loss is None and out.token_logprobs.shape == (3, 12)
    g = torch.randn(3, 12)
    got = torch.autograd.grad((out.token_logprobs * g).sum(), [model.lm_head.weight, model.model.norm.weight])
    logits = model(ids)  # the full logits, fp32
    lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * (targets != -100)
    torch.testing.assert_close(out.token_logprobs, lp, atol=1e-5, rtol=0)
    p = logits.softmax(-1)
    torch.testing.assert_close(out.token_entropy, -(p * p.clamp_min(1e-30).log()).sum(-1), atol=1e-4, rtol=0)
    want = torch.autograd.grad((lp * g).sum(), [model.lm_head.weight, model.model.norm.weight])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # chunking does not change the values: one row per chunk
    h = torch.randn(7, 64)
    w = torch.randn(256, 64)
    t = torch.randint(0, 256, (7,))
    a, _ = linear_logprobs(h, w, t, chunk_elems=256)
    torch.testing.assert_close(a, torch.log_softmax(h @ w.t(), -1).gather(1, t[:, None]).squeeze(1), atol=1e-5, rtol=0)
