"""Training: one loop (loop) that every stage runs as a Task, and the stages themselves: pretraining
(pretrain), supervised fine-tuning (sft) and GRPO reinforcement learning (grpo, scoring rollouts with the
rewards in rewards). Around them: the settings (config), optimizers (optim), learning-rate schedules
(schedule), checkpoints and resumption (checkpoint), the run's JSONL log (log), the task-accuracy probe run
at evaluations (probe) and torch.distributed setup and wrapping (distributed)."""

from nanoseek.train.config import TrainConfig
from nanoseek.train.loop import Task, TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "Task", "TrainResult", "TrainingDiverged", "train"]
