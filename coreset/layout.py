"""Where each stage's outputs live inside a study root (one place, so stages agree)."""
from __future__ import annotations

CONFIG = "config.yaml"
SPLIT = "split.parquet"
SOURCE = "source"
TRAIN_LOG = f"{SOURCE}/train_log.parquet"
TRAJECTORY = f"{SOURCE}/trajectory.parquet"
SOURCE_DONE = f"{SOURCE}/done.json"
RESUME = f"{SOURCE}/checkpoints/resume.pt"


def checkpoint(epoch: int) -> str:
    """Weights after ``epoch`` training epochs (epoch 0: the initialisation)."""
    return f"{SOURCE}/checkpoints/epoch={epoch:04d}.pt"
