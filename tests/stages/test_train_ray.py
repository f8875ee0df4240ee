"""Source training on real Ray: Ray Train data-parallel workers (gloo on CPU) and the job CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray
from studies import synthetic_study

from coreset import layout
from coreset.cluster.train import run_train
from coreset.rates import read_rates
from coreset.storage import StudyRoot

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield dict(ray.cluster_resources())
    ray.shutdown()


@pytest.mark.ray
def test_two_worker_data_parallel_training(tmp_path: Path, local_ray: dict) -> None:
    cfg = synthetic_study("ddp", "train.epochs=2", "train.probe_size=16", "train.workers=2")
    root = StudyRoot(str(tmp_path))
    result = run_train(cfg, root, local_ray)
    log = pd.read_parquet(tmp_path / "source" / "train_log.parquet")
    assert log.epoch.tolist() == [1, 2] and result.epochs_run == 2
    # Each of the 2 ranks saw half of the 461-image train split per epoch.
    assert log.samples_per_s.notna().all()
    assert {"epoch=0000.pt", "epoch=0001.pt", "epoch=0002.pt"} <= set(root.list("source/checkpoints"))
    assert log.test_acc.iloc[-1] > 0.5  # 4 synthetic classes: well above chance
    seen = pd.read_parquet(tmp_path / layout.CORRECTNESS)  # both ranks' rows, gathered: 2 x 230 per epoch
    assert seen.groupby("epoch").sample_id.nunique().to_dict() == {1: 460, 2: 460}
    assert not seen.duplicated(["sample_id", "epoch"]).any()  # (the log's train_acc is rank 0's shard only)
    again = run_train(cfg, root, local_ray)  # finished: no work
    assert again == result


@pytest.mark.slow
@pytest.mark.ray
def test_mnist_job_must_show(tmp_path: Path, shared_data: Path) -> None:
    """The shipped MNIST config through the job CLI, shortened to 2 of its 5 epochs (the
    cosine schedule over 2): at least 98.5% test accuracy (all 5 epochs: 99.27%, README);
    the log, probe trajectory and checkpoints of every epoch, and the stage's rates."""
    epochs = 2
    proc = subprocess.run([sys.executable, str(REPO / "jobs/train.py"),
                           "--config", str(REPO / "jobs/configs/mnist.yaml"),
                           "--root", str(tmp_path), "--set", f"data.root={shared_data}", f"train.epochs={epochs}"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = pd.read_parquet(tmp_path / "source" / "train_log.parquet")
    assert log.epoch.tolist() == list(range(1, epochs + 1))
    assert log.test_acc.iloc[-1] >= 0.985 and log.epoch_s.gt(log.wall_s).all()
    traj = pd.read_parquet(tmp_path / "source" / "trajectory.parquet")
    assert traj.groupby("epoch").size().eq(512).all() and traj.epoch.nunique() == epochs + 1
    # Trained models have smaller last-layer gradients than at initialisation (the paper's Figure 2).
    assert traj[traj.epoch == epochs].l2_last.median() < traj[traj.epoch == 0].l2_last.median() / 10
    ckpts = sorted(p.name for p in (tmp_path / "source" / "checkpoints").glob("epoch=*.pt"))
    assert len(ckpts) == epochs + 1
    rates = read_rates(StudyRoot(str(tmp_path)))
    assert {"train.image", "train.start"} <= set(rates) and rates["train.image"].per == "image"
