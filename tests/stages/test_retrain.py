"""The retrain stage in-process: its resume plan (the grid less the trials with a row under the
same settings) and one trial's training; Tune runs trials in tests/test_faults.py and the e2e test."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from studies import synthetic_study

from coreset import layout
from coreset.data import load_datasets, split_ids
from coreset.errors import StageError
from coreset.stages.retrain import (
    EarlyStopping,
    Trial,
    evaluated_images,
    plan,
    retrain,
    schedule,
    subset_ids,
    trial_cost,
    trial_grid,
    trial_packs,
    trial_settings,
    validation_ids,
)
from coreset.stages.train import load_split
from coreset.storage import StudyRoot
from coreset.tables import write_table


def _cfg(*extra: str):
    return synthetic_study("retrain", "data.synthetic_size=200", "score.methods=[random, max_gradient]",
                           "score.fractions=[0.1, 0.5]", "score.seeds=[0, 1]", "retrain.policy=steps",
                           "retrain.steps=6", "retrain.evaluations=2", "retrain.methods=[random]", *extra)


def test_plan_is_the_grid_less_finished_trials(tmp_path: Path) -> None:
    cfg, root = _cfg(), StudyRoot(str(tmp_path))
    work = plan(cfg, root)
    assert len(work.grid) == 1 * 2 * 2 + 2 and work.pending == work.grid  # random x fractions x seeds + full x seeds
    full = Trial("full", 1.0, 0, "mnist_cnn")
    assert full in work.grid

    datasets = load_datasets(cfg.data)
    train_ids = split_ids(load_split(cfg, root, datasets), "train")
    row = retrain(cfg, datasets, full, subset_ids(full, pd.DataFrame(), train_ids))
    assert row["n_train"] == len(train_ids) and row["steps"] == 6 and 0.0 <= row["test_acc"] <= 1.0
    write_table(root, work.row_path(full), pd.DataFrame([row]), "accuracy")

    again = plan(cfg, root)
    assert full not in again.pending and len(again.pending) == len(work.grid) - 1
    assert plan(_cfg("train.lr=0.01"), root).pending == work.grid  # other settings: rows are not reused


def test_a_trial_without_its_subset_is_a_clear_error() -> None:
    subsets = pd.DataFrame({"method": ["random"] * 3, "fraction": [0.5] * 3, "seed": [0] * 3, "sample_id": [4, 1, 9]})
    assert np.array_equal(subset_ids(Trial("random", 0.5, 0, "mnist_cnn"), subsets, np.arange(10)), [1, 4, 9])
    with pytest.raises(StageError, match="no subset for random at fraction 0.1 seed 0; run jobs/score.py"):
        subset_ids(Trial("random", 0.1, 0, "mnist_cnn"), subsets, np.arange(10))


def test_a_root_recreated_at_the_same_path_does_not_find_the_old_roots_tune_run(tmp_path: Path) -> None:
    """The old root's Tune state (all trials finished) must not be restored into a new root,
    whose trials have no rows: the run's id lives in the root, and goes with it."""
    from coreset.cluster.retrain import _new_tune_run, tune_experiment_dir

    cfg = _cfg(f"data.cache_dir={tmp_path / 'cache'}")
    root = StudyRoot(str(tmp_path / "study"))
    grid = plan(cfg, root).grid
    assert tune_experiment_dir(cfg, root, grid) is None
    state = _new_tune_run(cfg, root, grid)
    state.mkdir(parents=True)  # what Tune leaves behind after a finished run
    assert tune_experiment_dir(cfg, root, grid) == state
    assert tune_experiment_dir(cfg, StudyRoot(str(tmp_path / "study")), grid) == state  # the same root, reopened

    (tmp_path / "study" / layout.TUNE_RUNS).unlink()
    (tmp_path / "study" / layout.RETRAIN).rmdir()  # the root deleted and made again at the same path
    assert tune_experiment_dir(cfg, StudyRoot(str(tmp_path / "study")), grid) is None
    assert _new_tune_run(cfg, root, grid) != state


def test_trial_packs_hold_every_trial_once_and_cost_about_the_same() -> None:
    cfg = _cfg("retrain.methods=[random, max_gradient]", "score.fractions=[0.01, 0.1, 0.5]", "score.seeds=[0, 1, 2]",
               "retrain.policy=epochs", "retrain.epochs=2")
    trials = trial_grid(cfg)  # 2 methods x 3 fractions x 3 seeds + 3 full-data trials
    packs = trial_packs(cfg, trials, 1000, slots=2)
    assert len(packs) == 7 and set(map(len, packs)) == {3}  # four packs a slot hold ceil(21 / 8) each
    assert sorted(t.key for p in packs for t in p) == sorted(t.key for t in trials)
    assert {p[0].method for p in packs[:3]} == {"full"}  # the costliest first, one to a pack
    costs = [sum(trial_cost(cfg, t, 1000) for t in p) for p in packs]
    assert max(costs) - min(costs) <= max(trial_cost(cfg, t, 1000) for t in trials)  # dealt from the costliest
    assert trial_packs(cfg, list(reversed(trials)), 1000, slots=2) == packs  # the order given does not matter
    sized = trial_packs(_cfg("retrain.trials_per_pack=1"), trials, 1000, slots=2)
    assert len(sized) == len(trials)  # one trial a process, as before packs
    assert trial_packs(cfg, trials[:3], 1000, slots=8) == [[t] for t in sorted(trials[:3], key=lambda t: t.key)]
    assert trial_packs(cfg, [], 1000, slots=2) == []


def test_early_stopping_keeps_the_first_best_and_stops_after_patience_measurements_without_one() -> None:
    stopper = EarlyStopping(patience=2)
    seen = [(acc, stopper.update(acc, step), stopper.stop) for step, acc in ((5, 0.5), (10, 0.6), (15, 0.6),
                                                                              (20, 0.7), (25, 0.65), (30, 0.7))]
    assert [(better, stop) for _, better, stop in seen] == [(True, False), (True, False), (False, False),
                                                           (True, False), (False, False), (False, True)]
    assert (stopper.best, stopper.best_step) == (0.7, 20)  # the tie at step 30 keeps the earlier checkpoint
    margin = EarlyStopping(patience=2, min_delta=0.02)
    assert [margin.update(acc, step) for step, acc in ((5, 0.5), (10, 0.51), (15, 0.53))] == [True, False, True]
    assert (margin.best_step, margin.since_best) == (15, 0)


def test_early_stopping_reports_the_best_validation_checkpoints_test_accuracy() -> None:
    """Early stopping trains at a constant rate, so the steps up to a point do not depend on the
    maximum: a trial capped at another's best-validation step ends on that checkpoint, and its
    final test accuracy must be the one the first trial reported for its best checkpoint."""
    cfg = _cfg("retrain.policy=early_stopping", "retrain.steps=200", "retrain.validate_every=4",
               "retrain.patience=3", "train.schedule=cosine", "train.lr=0.2", "retrain.batch_size=16")
    datasets = load_datasets(cfg.data)
    ids, val = np.arange(0, 120), validation_ids(cfg, np.arange(120, 200))
    trial = Trial("random", 0.5, 0, "mnist_cnn")
    seen: list[dict] = []
    row = retrain(cfg, datasets, trial, ids, report=seen.append, val_ids=val)
    assert row["steps"] < 200 and row["steps"] % 4 == 0  # stopped before the maximum, at a measurement
    assert row["val_acc"] == max(m["val_acc"] for m in seen)
    assert row["best_step"] == next(m["step"] for m in seen if m["val_acc"] == row["val_acc"])
    assert row["steps"] == row["best_step"] + 3 * 4  # three measurements without a better one
    assert row["epochs"] == pytest.approx(row["steps"] / 8)  # 120 images: passes of 8 batches, the last of 8
    capped = retrain(dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, steps=row["best_step"])),
                     datasets, trial, ids, val_ids=val)
    assert capped["steps"] == row["best_step"]
    assert capped["final_test_acc"] == row["test_acc"]


def test_a_stall_first_drops_the_rate_then_patience_starts_again() -> None:
    """``retrain.lr_drops``: the trial without drops stops at its first stall; with one, the same
    steps run up to there (same seed, same rate), then at a tenth of the rate it goes on for at
    least ``patience`` more measurements, and stops only at the second stall."""
    base = ("retrain.policy=early_stopping", "retrain.steps=400", "retrain.validate_every=4", "retrain.patience=2",
            "train.lr=0.2", "retrain.batch_size=16")
    datasets = load_datasets(_cfg(*base).data)
    ids, val = np.arange(0, 120), validation_ids(_cfg(*base), np.arange(120, 200))
    trial = Trial("random", 0.5, 0, "mnist_cnn")
    plain, dropped = [], []
    first = retrain(_cfg(*base), datasets, trial, ids, report=plain.append, val_ids=val)
    second = retrain(_cfg(*base, "retrain.lr_drops=1"), datasets, trial, ids, report=dropped.append, val_ids=val)
    assert first["steps"] < 400 and second["steps"] >= first["steps"] + 2 * 4
    assert [m["val_acc"] for m in dropped[:len(plain)]] == [m["val_acc"] for m in plain]
    assert second["val_acc"] >= first["val_acc"]
    assert "lr_drops" in trial_settings(_cfg(*base, "retrain.lr_drops=1")) and "lr_drops" not in trial_settings(
        _cfg(*base))


def test_early_stopping_settings_and_schedule() -> None:
    cfg = _cfg("retrain.policy=early_stopping", "retrain.steps=1000", "retrain.epochs=30", "retrain.validate_every=50",
               "retrain.batch_size=10")
    assert schedule(cfg, 100) == (6, 50)  # 30 epochs of 10 steps cap the 1000 steps: 300, measured every 50
    assert schedule(cfg, 5) == (1, 30)  # 30 one-step epochs, measured once
    passes = _cfg("retrain.policy=early_stopping", "retrain.steps=1000", "retrain.validate_every=50",
                  "retrain.batch_size=10", "retrain.validate_epochs=0.5")
    assert schedule(passes, 100) == (20, 50)  # half a pass is 5 steps: the 50 steps are longer
    assert schedule(passes, 2000) == (10, 100)  # half a pass of 200 steps: measured every 100
    assert "validate_epochs" in trial_settings(passes) and "validate_epochs" not in trial_settings(cfg)
    assert "patience" in trial_settings(cfg) and "patience" not in trial_settings(_cfg())  # other keys unchanged
    assert evaluated_images(cfg, 6, n_test=1000, n_val=300) == 6 * 300 + 2 * 1000  # measured, then last and best
    assert evaluated_images(_cfg(), 2, n_test=1000, n_val=300) == 2 * 1000
    val = np.arange(100, 400)
    assert np.array_equal(validation_ids(cfg, val), val)
    drawn = validation_ids(dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, val_size=50)), val)
    assert len(drawn) == 50 and set(drawn) <= set(val) and np.all(np.diff(drawn) > 0)
    with pytest.raises(StageError, match="needs the study's validation images"):
        retrain(cfg, load_datasets(cfg.data), Trial("random", 0.5, 0, "mnist_cnn"), np.arange(20))
