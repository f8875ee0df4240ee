"""Source training in-process on the synthetic set: checkpoints every epoch, the resume plan
(real MNIST accuracy: tests/stages/test_train_ray.py, through the job)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from studies import synthetic_study

from coreset import layout
from coreset.checkpoints import load_checkpoint
from coreset.stages.train import plan, read_source_result, train_source
from coreset.storage import StudyRoot


def _synthetic(epochs: int, *extra: str):
    return synthetic_study("syn", f"train.epochs={epochs}", "train.probe_size=16", *extra)


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_model(tmp_path: Path) -> None:
    full = StudyRoot(str(tmp_path / "full"))
    train_source(_synthetic(3), full)

    cut = StudyRoot(str(tmp_path / "cut"))
    assert (plan(_synthetic(3), cut).epochs_done, plan(_synthetic(3), cut).finished) == (0, False)

    def stop_after_first(metrics: dict) -> None:
        if metrics["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_source(_synthetic(3), cut, report=stop_after_first)
    assert read_source_result(cut) is None
    assert sorted(cut.list("source/checkpoints")) == ["epoch=0000.pt", "epoch=0001.pt", "resume.pt"]
    left = plan(_synthetic(3), cut)
    assert (left.epochs, left.epochs_done, left.finished) == (3, 1, False)
    train_source(_synthetic(3), cut)
    done = plan(_synthetic(3), cut)
    assert done.finished and done.epochs_done == 3 and done.result == read_source_result(cut)

    a = load_checkpoint(full, layout.checkpoint(3))["model"]
    b = load_checkpoint(cut, layout.checkpoint(3))["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    log_full = pd.read_parquet(tmp_path / "full" / "source" / "train_log.parquet")
    log_cut = pd.read_parquet(tmp_path / "cut" / "source" / "train_log.parquet")
    assert log_cut.epoch.tolist() == [1, 2, 3]
    assert log_cut.train_loss.to_numpy() == pytest.approx(log_full.train_loss.to_numpy(), rel=1e-4)
    traj = pd.read_parquet(tmp_path / "cut" / "source" / "trajectory.parquet")
    assert traj.groupby("epoch").size().to_dict() == {0: 16, 1: 16, 2: 16, 3: 16}
    # Every training image's correctness at every epoch (Forgetting's input), resumed alike; it is
    # the training forward pass's, so its mean is the logged training accuracy.
    seen = {name: pd.read_parquet(tmp_path / name / layout.CORRECTNESS) for name in ("full", "cut")}
    split = pd.read_parquet(tmp_path / "full" / layout.SPLIT)
    train_ids = sorted(split.sample_id[split.split == "train"])
    for epoch, rows in seen["cut"].groupby("epoch"):
        assert rows.sample_id.tolist() == train_ids, epoch
        assert rows.correct.mean() == pytest.approx(log_cut.train_acc[log_cut.epoch == epoch].item())
    assert sorted(seen["cut"].epoch.unique()) == [1, 2, 3]
    assert (seen["cut"].correct.to_numpy() == seen["full"].correct.to_numpy()).mean() > 0.98  # float noise only


def test_early_stopping_records_best_epoch(tmp_path: Path) -> None:
    # lr 0 never improves validation accuracy: stops after `patience` epochs.
    root = StudyRoot(str(tmp_path))
    result = train_source(_synthetic(10, "train.lr=1e-9", "train.early_stopping_patience=2"), root)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
