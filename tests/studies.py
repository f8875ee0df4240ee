"""Small study configs on the synthetic set, shared by the stage tests (fast, no real data)."""
from __future__ import annotations

from coreset.config import StudyConfig, load_config

BASE = ["data.name=synthetic", "model.name=mnist_cnn", "train.lr=0.05", "train.batch_size=32", "train.probe_size=8"]


def synthetic_study(name: str, *overrides: str) -> StudyConfig:
    """The mnist_cnn on the 16-px synthetic set; ``overrides`` (``key=value``) come last and win."""
    return load_config(None, [f"name={name}", *BASE, *overrides])

# `--set` overrides that turn jobs/configs/smoke.yaml into a ~40 s study on the synthetic set with
# every stage (GradSimCore included) and two retraining trials: the cloud-root and job tests.
SMOKE_SYNTHETIC = ["data.name=synthetic", "train.probe_size=8", "score.methods=[random,gradsimcore]",
                   "score.fractions=[0.05]", "score.seeds=[0]", "retrain.full_data=false"]
