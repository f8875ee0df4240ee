"""Small study configs on the synthetic set, shared by the stage tests (fast, no real data)."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import ray

from coreset.config import StudyConfig, load_config
from coreset.stages import subset_diagnostics as diagnostics
from coreset.storage import StudyRoot

BASE = ["data.name=synthetic", "model.name=mnist_cnn", "train.lr=0.05", "train.batch_size=32", "train.probe_size=8"]


def synthetic_study(name: str, *overrides: str) -> StudyConfig:
    """The mnist_cnn on the 16-px synthetic set; ``overrides`` (``key=value``) come last and win."""
    return load_config(None, [f"name={name}", *BASE, *overrides])

# `--set` overrides that turn jobs/configs/smoke.yaml into a ~40 s study on the synthetic set with
# every stage (GradSimCore included) and two retraining trials: the cloud-root and job tests.
SMOKE_SYNTHETIC = ["data.name=synthetic", "train.probe_size=8", "score.methods=[random,gradsimcore]",
                   "score.fractions=[0.05]", "score.seeds=[0]", "retrain.full_data=false"]


def copy_root(src: Path, dst: Path) -> StudyRoot:
    """A fresh copy of a prepared study root, so a test may write to it."""
    shutil.copytree(src, dst)
    return StudyRoot(str(dst))


def ray_copy(src: Path, dst: Path) -> Iterator[StudyRoot]:
    """A copy of ``src`` with a 2-CPU local Ray running for the tests that use it (a fixture body)."""
    root = copy_root(src, dst)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield root
    ray.shutdown()


def diagnose_in_process(root: StudyRoot, table: dict) -> None:
    """The score stage's subset-diagnostics pass without Ray: every class unit in turn."""
    work = diagnostics.plan(root, table)
    subsets, labels = diagnostics.labelled_subsets(root)
    units = diagnostics.unit_work(subsets, table)
    parts = [diagnostics.diagnose_unit(root, table, shards, rows) for shards, rows in units]
    diagnostics.write(root, work, diagnostics.merge(parts, subsets, labels))
