"""Small study configs on the synthetic set, shared by the stage tests (fast, no real data)."""
from __future__ import annotations

from coreset.config import StudyConfig, load_config

BASE = ["data.name=synthetic", "model.name=mnist_cnn", "train.lr=0.05", "train.batch_size=32", "train.probe_size=8"]


def synthetic_study(name: str, *overrides: str) -> StudyConfig:
    """The mnist_cnn on the 16-px synthetic set; ``overrides`` (``key=value``) come last and win."""
    return load_config(None, [f"name={name}", *BASE, *overrides])
