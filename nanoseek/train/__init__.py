"""The one training loop (pretraining now; SFT and GRPO plug in their own Task), its optimizers, schedules,
checkpoints and torch.distributed wrapping."""

from nanoseek.train.config import TrainConfig
from nanoseek.train.loop import Task, TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "Task", "TrainResult", "TrainingDiverged", "train"]
