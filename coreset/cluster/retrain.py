"""Retraining trials on Ray Tune: a grid over method x fraction x seed x target model.

A Tune trial runs one pack of grid trials (:func:`coreset.stages.retrain.trial_packs`)
one after another, loading the data once. Each grid trial writes its accuracy row to the
study root when it finishes, so the root, not Tune's state, says what is done: a re-run
starts only trials without a row, a pack retried after a failure skips its trials that
have one, and an
interrupted Tune run is continued with ``Tuner.restore`` (finished trials are not run
again). Tune's experiment state holds pickles, and nothing is ever unpickled from a study
root, so it lives beside the driver (:func:`tune_experiment_dir`), not in the root:
losing it (a new head node) costs only the restore, never a finished trial. Trials ask for
``cpus_per_trial`` CPUs and, on GPU clusters, a fraction of a GPU so that small-subset
trials share one. Failed trials are retried (``FailureConfig``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from ray import tune

from coreset import layout, placement
from coreset.cluster.runtime import verbose
from coreset.config import StudyConfig, config_from_dict
from coreset.data import load_datasets
from coreset.data.formats import cache_dir
from coreset.devices import pick_device
from coreset.errors import StageError, UserError
from coreset.progress import PROGRESS, duration
from coreset.rates import record_rates
from coreset.stages.retrain import (
    RetrainPlan,
    Trial,
    grid_name,
    measured_rates,
    plan,
    recorded_subset,
    recorded_validation,
    retrain,
    settings_key,
    trial_packs,
)
from coreset.stages.train import recorded_train_ids
from coreset.storage import StudyRoot
from coreset.tables import read_table, write_table

log = logging.getLogger("coreset")


_USER_ERROR = "user_error"
_TRIAL_DONE = "trial_done"  # a pack's report when one of its trials has its row


def _trainable(config: dict[str, Any]) -> None:
    """One Tune trial: a pack. A user error (full or read-only root, bad data) is reported, not
    raised: Tune would retry it and log its traceback, and the driver turns it into one line."""
    try:
        _run_pack(config)
    except UserError as e:
        tune.report({"epoch": 0, _USER_ERROR: str(e)})


def _run_pack(config: dict[str, Any]) -> None:
    """Each trial of the pack in turn: train on its subset, report every evaluation, write its
    row. A trial with a row (finished before a failure or interrupt) is reported and skipped.
    The pack's trials share one ``Datasets``, so on a GPU the splits go over to it once
    (:meth:`Datasets.resident`) and each trial indexes its subset there."""
    cfg = config_from_dict(config["study"])
    root = StudyRoot(config["root"])
    torch.set_num_threads(int(config["threads"]))
    device = pick_device(cfg.train.use_gpu)
    settings = settings_key(cfg)
    datasets, val_ids = None, recorded_validation(cfg, root)
    for spec in config["pack"]:
        trial = Trial(**spec)
        row_path = layout.trial_row(settings, trial.key)
        if root.exists(row_path):
            row = read_table(root, row_path, "accuracy").iloc[0]
            tune.report({"trial": trial.key, "test_acc": float(row.test_acc), _TRIAL_DONE: True, "done_before": True})
            continue
        ids = recorded_subset(root, trial)
        datasets = datasets or load_datasets(cfg.data)
        row = retrain(cfg, datasets, trial, ids, report=functools.partial(_report_of, trial.key), device=device,
                      val_ids=val_ids)
        write_table(root, row_path, pd.DataFrame([row]), "accuracy")
        tune.report({"trial": trial.key, "test_acc": row["test_acc"], _TRIAL_DONE: True})


def _report_of(key: str, metrics: dict[str, Any]) -> None:
    tune.report({"trial": key, **metrics})


def run_retrain(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float],
                work: RetrainPlan | None = None) -> pd.DataFrame:
    """Run every unfinished trial; returns (and writes) the accuracy table of the whole grid."""
    start = time.perf_counter()
    work = work or plan(cfg, root)
    grid, pending = work.grid, work.pending
    log.debug("retrain: %d trials, %d already finished", len(grid), len(grid) - len(pending))
    errored = 0
    progress = TrialProgress(len(grid), len(grid) - len(pending))
    packs: list[list[Trial]] = []
    if pending:
        packs = trial_packs(cfg, pending, len(recorded_train_ids(root)), placement.trial(cfg, resources).parallel)
        results = _tune(cfg, root, resources, grid, packs, progress)
        errors = [r.metrics[_USER_ERROR] for r in results if r.metrics and r.metrics.get(_USER_ERROR)]
        if errors:
            raise StageError(errors[0])
        errored = results.num_errors
    rows = [read_table(root, work.row_path(t), "accuracy") for t in grid if root.exists(work.row_path(t))]
    missing = len(grid) - len(rows)
    if missing and errored:
        raise StageError(f"{errored} retraining trials failed after retries; see the Tune logs under "
                         f"{tune_experiment_dir(cfg, root, grid)}")
    if missing:
        raise StageError(f"retraining was interrupted with {len(rows)} of {len(grid)} trials finished; "
                         f"run the same command again to continue")
    accuracy = pd.concat(rows, ignore_index=True)
    if pending or not root.exists(layout.ACCURACY):
        write_table(root, layout.ACCURACY, accuracy, "accuracy")
    if pending:
        ran = pd.concat([read_table(root, work.row_path(t), "accuracy") for t in pending], ignore_index=True)
        tune_start = None if progress.first_trial is None else progress.first_trial - start
        record_rates(root, measured_rates(ran, time.perf_counter() - start, placement.trial(cfg, resources),
                                          tune_start, len(packs)))
    return accuracy


class TrialProgress(tune.Callback):
    """A console line every ``every_s`` seconds while trials run (Tune's own table is off):
    grid trials finished (in earlier runs too), packs running, the total and the ETA at this
    run's rate. Runs in the driver, inside Tune's loop. It also notes when Tune launched the
    first pack (``first_trial``, on the ``time.perf_counter`` clock), which ends the stage's
    start."""

    def __init__(self, total: int, finished_before: int, every_s: float = 30.0) -> None:
        self.total, self.before, self.every_s = total, finished_before, every_s
        self.start = self.last = time.monotonic()
        self.first_trial: float | None = None
        self.finished: set[str] = set()  # grid trials of this run's packs with a row
        self.at_setup = 0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.first_trial is None:
            self.first_trial = time.perf_counter()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(_TRIAL_DONE):
            self.finished.add(result["trial"])

    def setup(self, **info: Any) -> None:
        # also after Tuner.restore unpickles this: the ETA's rate counts this run's trials only
        self.start = self.last = time.monotonic()
        self.at_setup = len(self.finished)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            log.info("%s", self.line(trials, now), extra=PROGRESS)

    def line(self, trials: list, now: float) -> str:
        done = len(self.finished)
        running = sum(t.status == "RUNNING" for t in trials)
        left, rate_of = self.total - self.before - done, done - self.at_setup
        eta = f"ETA {duration((now - self.start) / rate_of * left)}" if rate_of > 0 and left > 0 else "ETA unknown"
        if left <= 0:
            eta = f"in {duration(now - self.start)}"
        packs = "1 pack" if running == 1 else f"{running} packs"
        return f"retrain: {self.before + done}/{self.total} trials finished, {packs} running, {eta}"


def tune_experiment_dir(cfg: StudyConfig, root: StudyRoot, grid: list[Trial]) -> Path | None:
    """Where Tune keeps the state of this grid's run at this root, in the driver's cache; None
    before the root has started one.

    The folder is named by the study root's address, the trial settings and the run's id,
    which the root records (:data:`coreset.layout.TUNE_RUNS`): a root deleted and re-created
    at the same address has no id, so it never restores the old root's run (whose trials,
    all finished there, have no rows here)."""
    run = _tune_runs(root).get(_grid_key(cfg, grid))
    return None if run is None else _experiment_dir(cfg, root, grid, run)


def _grid_key(cfg: StudyConfig, grid: list[Trial]) -> str:
    return f"{grid_name(grid)}-{settings_key(cfg)}-packed"  # runs of one trial per Tune trial are not restored


def _tune_runs(root: StudyRoot) -> dict[str, str]:
    return json.loads(root.read_bytes(layout.TUNE_RUNS)) if root.exists(layout.TUNE_RUNS) else {}


def _experiment_dir(cfg: StudyConfig, root: StudyRoot, grid: list[Trial], run: str) -> Path:
    study = hashlib.sha256(root.uri.encode()).hexdigest()[:12]
    return cache_dir(cfg.data) / "tune" / study / f"{_grid_key(cfg, grid)}-{run}"


def _new_tune_run(cfg: StudyConfig, root: StudyRoot, grid: list[Trial]) -> Path:
    """Record a new run id for this grid in the root; the folder its state will live in."""
    runs, run = _tune_runs(root), uuid.uuid4().hex[:8]
    runs[_grid_key(cfg, grid)] = run
    root.write_bytes(layout.TUNE_RUNS, json.dumps(runs, indent=2).encode())
    return _experiment_dir(cfg, root, grid, run)


def _tune(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float], grid: list[Trial],
          packs: list[list[Trial]], progress: TrialProgress) -> tune.ResultGrid:
    """Run (or restore) the Tune experiment of the pending trials' ``packs`` (a restored run
    keeps the packs it was interrupted in); ``progress`` reports on a new one (a restored run
    brings back its own)."""
    r = cfg.retrain
    unit = placement.trial(cfg, resources)
    per_trial = {"cpu": unit.cpus, **({"gpu": unit.gpus} if unit.gpus else {})}
    trainable = tune.with_resources(_trainable, per_trial)
    path = tune_experiment_dir(cfg, root, grid)
    if not verbose():
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's legacy reporter prints nothing at verbose=0
    if path is not None and tune.Tuner.can_restore(str(path)):
        log.info("retrain: restoring the interrupted Tune run %s", path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        path = _new_tune_run(cfg, root, grid)
        common = {"study": cfg.to_dict(), "root": root.uri, "threads": r.cpus_per_trial}
        space = {**common, "pack": tune.grid_search([[asdict(t) for t in pack] for pack in packs])}
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=r.max_concurrent or None),
            run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=0, callbacks=[progress],
                                      failure_config=tune.FailureConfig(max_failures=r.max_failures)),
        )
    return tuner.fit()
