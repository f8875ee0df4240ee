"""Retraining from scratch on a subset: the measure of how well a coreset stands in for
the full data. Pure PyTorch; Ray Tune runs one :func:`retrain` per trial. The resume plan
(:func:`plan`) is the grid less the trials whose accuracy rows the root already holds.

Every length policy runs optimiser steps split into evaluation intervals: ``epochs``
evaluates after every pass over the subset (DeepCore's 200 epochs); ``steps`` runs a fixed
budget of steps (reshuffled passes over the subset) and evaluates at evenly spaced points,
so tiny subsets are not evaluated hundreds of times; ``early_stopping`` (the
gradient-magnitude paper's) measures validation accuracy every ``validate_every`` steps
(or ``validate_epochs`` passes where longer), stops when it stalls, and reports the test
accuracy of its best-validation checkpoint.

Trials run in packs (:func:`trial_packs`), one after another in one process that loads the
data once. On 2 CPU cores an MNIST trial of 300 steps trains in 15-30 s, and a process of its
own spent about 12 s more starting and loading the data. On a GPU the decoded splits are held
there once per pack process (:func:`trial_batches`, :mod:`coreset.data.resident`): the one or
two CPU cores of a trial could not slice and augment batches as fast as the GPU trains.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from coreset import layout
from coreset.config import StudyConfig, method_of
from coreset.data import Batches, Datasets, split_ids
from coreset.data.resident import budget_bytes
from coreset.devices import pick_device
from coreset.errors import StageError
from coreset.methods.budget import global_budget
from coreset.models import build_model
from coreset.placement import Placement
from coreset.rates import Rate, rate
from coreset.stages.train import recorded_train_ids
from coreset.storage import StudyRoot
from coreset.tables import read_table
from coreset.training import build_optimizer, build_scheduler, evaluate, prepare_model, train_one_epoch


@dataclass(frozen=True)
class Trial:
    """One point of the grid; ``fraction`` 1.0 with method ``full`` is the full-data reference."""

    method: str
    fraction: float
    seed: int
    target_model: str

    @property
    def key(self) -> str:
        return f"{self.target_model}__{self.method}__f{self.fraction:g}__s{self.seed}"


def settings_key(cfg: StudyConfig) -> str:
    """Short hash of :func:`trial_settings`: rows of trials run with other settings are not reused."""
    return hashlib.sha256(json.dumps(trial_settings(cfg), sort_keys=True).encode()).hexdigest()[:8]


def trial_grid(cfg: StudyConfig) -> list[Trial]:
    r = cfg.retrain
    instances = cfg.score.instances
    methods = [i for m in r.methods for i in instances if i == m or method_of(i) == m] if r.methods else instances
    fractions = r.fractions or cfg.score.fractions
    seeds = r.seeds or cfg.score.seeds
    targets = r.target_models or (cfg.model.name,)
    grid = [Trial(m, f, s, t) for t in targets for m in methods for f in fractions for s in seeds]
    if r.full_data:
        grid += [Trial("full", 1.0, s, t) for t in targets for s in seeds]
    return grid


@dataclass(frozen=True)
class RetrainPlan:
    """The trial grid, the key of its training settings, and the trials without a row."""

    grid: list[Trial]
    settings: str
    pending: list[Trial]

    def row_path(self, trial: Trial) -> str:
        return layout.trial_row(self.settings, trial.key)

    def summary(self) -> str:
        return f"{len(self.pending)} of {len(self.grid)} trials to run"


def plan(cfg: StudyConfig, root: StudyRoot) -> RetrainPlan:
    """Every trial of the grid and those not finished (no accuracy row under these settings)."""
    grid = trial_grid(cfg)
    settings = settings_key(cfg)
    return RetrainPlan(grid, settings, [t for t in grid if not root.exists(layout.trial_row(settings, t.key))])


def grid_name(grid: list[Trial]) -> str:
    """A stable name of the grid: the Tune experiment that a restore continues."""
    return "retrain-" + hashlib.sha256(json.dumps(sorted(t.key for t in grid)).encode()).hexdigest()[:10]


def subset_ids(trial: Trial, subsets: pd.DataFrame, train_ids: np.ndarray) -> np.ndarray:
    if trial.method == "full":
        return np.sort(train_ids)
    rows = subsets[(subsets.method == trial.method) & np.isclose(subsets.fraction, trial.fraction)
                   & (subsets.seed == trial.seed)]
    if rows.empty:
        raise StageError(f"no subset for {trial.method} at fraction {trial.fraction} seed {trial.seed}; "
                         f"run jobs/score.py")
    return np.sort(rows.sample_id.to_numpy())


def recorded_validation(cfg: StudyConfig, root: StudyRoot) -> np.ndarray | None:
    """The validation images early stopping measures (None under the other policies)."""
    if cfg.retrain.policy != "early_stopping":
        return None
    return validation_ids(cfg, split_ids(read_table(root, layout.SPLIT, "split"), "val"))


def recorded_subset(root: StudyRoot, trial: Trial) -> np.ndarray:
    """The sorted train ids ``trial`` trains on: its subset as the score stage recorded it
    (``subsets/<method>.parquet``), or the recorded train split for ``full``."""
    subsets = read_table(root, layout.subsets(trial.method), "subsets") if trial.method != "full" else pd.DataFrame()
    return subset_ids(trial, subsets, recorded_train_ids(root))


def trial_images(trial: Trial, n_train: int) -> int:
    """The images a trial trains on: the whole train split, or its method's subset (k of the
    budget rule, class-balanced or global alike) at the trial's fraction."""
    return n_train if trial.method == "full" else global_budget(n_train, trial.fraction)


LR_DROP = 0.1  # early stopping's rate drop on a stall (retrain.lr_drops)
PACKS_PER_SLOT = 4  # packs per trial slot when retrain.trials_per_pack is 0: the last round stays short


def trial_steps(cfg: StudyConfig, trial: Trial, n_train: int) -> int:
    """The optimiser steps a trial runs: under ``early_stopping`` the most it may run."""
    intervals, per_interval = schedule(cfg, trial_images(trial, n_train))
    return intervals * per_interval


def trial_cost(cfg: StudyConfig, trial: Trial, n_train: int) -> int:
    """Images a trial's optimiser steps go through: its training cost, up to its model's rate."""
    return trial_steps(cfg, trial, n_train) * min(cfg.retrain.batch_size, trial_images(trial, n_train))


def trial_packs(cfg: StudyConfig, trials: list[Trial], n_train: int, slots: int) -> list[list[Trial]]:
    """``trials`` in packs of at most ``retrain.trials_per_pack`` (0: ``PACKS_PER_SLOT`` packs
    for each of the cluster's ``slots``), each pack run by one process.

    Trials are dealt in turn to the packs from the costliest down, so packs cost about the
    same and a full-data trial never waits behind another in one pack while slots stand idle.
    The same arguments give the same packs."""
    if not trials:
        return []
    size = cfg.retrain.trials_per_pack or math.ceil(len(trials) / (PACKS_PER_SLOT * max(1, slots)))
    count = math.ceil(len(trials) / size)
    ranked = sorted(trials, key=lambda t: (-trial_cost(cfg, t, n_train), t.key))
    return [ranked[i::count] for i in range(count)]


def schedule(cfg: StudyConfig, n: int) -> tuple[int, int]:
    """(evaluation intervals, steps per interval) of a trial on ``n`` images; under
    ``early_stopping`` the most it may run (it stops sooner when validation accuracy stalls)."""
    r = cfg.retrain
    per_pass = math.ceil(n / r.batch_size)
    if r.policy == "epochs":
        return r.epochs, per_pass
    if r.policy == "early_stopping":
        most = min(r.steps, r.epochs * per_pass)
        per = min(max(r.validate_every, math.ceil(r.validate_epochs * per_pass)), most)
        return math.ceil(most / per), per
    intervals = min(r.evaluations, r.steps)
    return intervals, math.ceil(r.steps / intervals)


def evaluated_images(cfg: StudyConfig, intervals: float, n_test: int, n_val: int) -> float:
    """Images a trial of ``intervals`` evaluation intervals evaluates: the test split at each,
    or under early stopping the ``n_val`` validation images at each and the test split at the
    last and the best checkpoint (the most it evaluates)."""
    if cfg.retrain.policy == "early_stopping":
        return intervals * n_val + 2 * n_test
    return intervals * n_test


def cycle_batches(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless batches: a fixed number of steps may outlast one pass over a small subset."""
    for epoch in itertools.count(1):
        batches.set_epoch(epoch)
        yield from batches


@dataclass
class EarlyStopping:
    """Patience on validation accuracy. :meth:`update` takes each measurement and says whether
    it is the best so far by more than ``min_delta`` (strictly: a tie keeps the earlier,
    shorter-trained checkpoint); :attr:`stop` holds once ``patience`` measurements in a row
    were not. ``min_delta``: gains of an image or two in the validation images are noise, and
    counting them kept small-subset trials creeping on for hundreds of steps."""

    patience: int
    min_delta: float = 0.0
    best: float = -math.inf
    best_step: int = 0
    since_best: int = 0

    def update(self, acc: float, step: int) -> bool:
        if acc > self.best + self.min_delta:
            self.best, self.best_step, self.since_best = acc, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def stop(self) -> bool:
        return self.since_best >= self.patience


def validation_ids(cfg: StudyConfig, val_ids: np.ndarray) -> np.ndarray:
    """The validation images early stopping measures: ``retrain.val_size`` of the split, drawn
    once from the study's seed (the same for every trial), or all of it."""
    size = cfg.retrain.val_size
    if size == 0 or size >= len(val_ids):
        return np.sort(val_ids)
    return np.sort(np.random.default_rng(cfg.seed + 2).choice(val_ids, size, replace=False))


def resident_data(cfg: StudyConfig, datasets: Datasets, device: torch.device) -> tuple[Datasets, int]:
    """The datasets a trial on ``device`` reads (held there when both splits fit in the budget,
    :meth:`Datasets.resident`), and that budget in bytes."""
    budget = budget_bytes(device, cfg.retrain.resident_max_gb, cfg.retrain.gpus_per_trial)
    return datasets.resident(device, budget) or datasets, budget


def trial_batches(cfg: StudyConfig, datasets: Datasets, ids: np.ndarray, seed: int, device: torch.device,
                  val_ids: np.ndarray | None) -> tuple[Batches, Batches, Batches | None]:
    """A trial's (train, test, validation) batches: from the splits held on ``device`` when they
    fit in ``retrain.resident_max_gb`` (:meth:`Datasets.resident`: once per process, so a pack's
    trials share them), else through the loader, a gathered subset still held there when it
    fits. The same batches either way: the shuffle and the augmentation are drawn on the CPU
    from the trial's seed."""
    r, eval_batch = cfg.retrain, cfg.train.eval_batch_size
    data, budget = resident_data(cfg, datasets, device)
    train = data.subset_batches(ids, r.batch_size, train=True, shuffle=True, seed=seed,
                                device=device if budget else None, max_bytes=budget)
    test = data.batches("test", None, eval_batch)
    return train, test, None if val_ids is None else data.batches("train", val_ids, eval_batch)


def retrain(cfg: StudyConfig, datasets: Datasets, trial: Trial, ids: np.ndarray,
            report: Callable[[dict[str, Any]], None] = lambda m: None,
            device: torch.device | None = None, val_ids: np.ndarray | None = None) -> dict[str, Any]:
    """Train ``trial.target_model`` from random init on ``ids``; the trial's accuracy row.
    ``val_ids``: the validation images ``early_stopping`` measures (see :func:`validation_ids`)."""
    start = time.perf_counter()
    r = cfg.retrain
    early = r.policy == "early_stopping"
    if early and (val_ids is None or not len(val_ids)):
        raise StageError("retrain.policy early_stopping needs the study's validation images; the split has none")
    device = device or pick_device(cfg.train.use_gpu)
    torch.manual_seed(cfg.seed * 1_000_003 + trial.seed)
    model = prepare_model(build_model(trial.target_model, datasets.spec), device)
    intervals, per_interval = schedule(cfg, len(ids))
    tcfg = dataclasses.replace(cfg.train, epochs=intervals, warmup_epochs=0,
                               milestones=tuple(m for m in cfg.train.milestones if m <= intervals))
    if (tcfg.schedule == "step" and not tcfg.milestones) or early:
        # early stopping at a constant rate: one decaying over the maximum would keep validation
        # accuracy creeping up until the maximum, and the rule would never stop
        tcfg = dataclasses.replace(tcfg, schedule="constant")
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, per_interval)
    train, test, val = trial_batches(cfg, datasets, ids, trial.seed, device, val_ids if early else None)
    stream = cycle_batches(train)
    stopper, best_state, accs, drops = EarlyStopping(r.patience, r.min_delta), None, [], 0
    for interval in range(1, intervals + 1):
        stats = train_one_epoch(model, itertools.islice(stream, per_interval), optimizer, scheduler, device,
                                cfg.train.amp)
        step = interval * per_interval
        if val is None:
            accs.append(evaluate(model, test, device, cfg.train.amp).acc)
            report({"epoch": interval, "step": step, "test_acc": accs[-1], "train_loss": stats.loss})
            continue
        val_acc = evaluate(model, val, device, cfg.train.amp).acc
        if stopper.update(val_acc, step):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        report({"epoch": interval, "step": step, "val_acc": val_acc, "train_loss": stats.loss})
        if stopper.stop and drops < r.lr_drops:  # a stall divides the rate, and patience starts again
            drops, stopper.since_best = drops + 1, 0
            scheduler.base_lrs = [lr * LR_DROP for lr in scheduler.base_lrs]  # LambdaLR scales these each step
        elif stopper.stop:
            break
    steps = interval * per_interval
    if val is None:
        test_acc, final, val_acc, best_step = accs[-1], accs[-1], math.nan, steps
    else:
        final = test_acc = evaluate(model, test, device, cfg.train.amp).acc
        if stopper.best_step != steps:  # back to the best-validation checkpoint
            model.load_state_dict(best_state)
            test_acc = evaluate(model, test, device, cfg.train.amp).acc
        accs, val_acc, best_step = [final, test_acc], stopper.best, stopper.best_step
    return {"method": trial.method, "fraction": trial.fraction, "seed": trial.seed, "source_model": cfg.model.name,
            "target_model": trial.target_model, "n_train": len(ids), "test_acc": test_acc, "best_test_acc": max(accs),
            "final_test_acc": final, "val_acc": val_acc, "best_step": best_step,
            "epochs": steps / math.ceil(len(ids) / r.batch_size), "steps": steps, "policy": r.policy,
            "wall_s": time.perf_counter() - start, "config": json.dumps(trial_settings(cfg), sort_keys=True)}


def trial_settings(cfg: StudyConfig) -> dict[str, Any]:
    """What a trial's result depends on besides its grid point (recorded per row). The
    early-stopping settings join only under that policy: rows of the other policies keep
    their key."""
    r, t = cfg.retrain, cfg.train
    settings = {"policy": r.policy, "epochs": r.epochs, "steps": r.steps, "evaluations": r.evaluations,
                "batch_size": r.batch_size, "lr": t.lr, "momentum": t.momentum, "weight_decay": t.weight_decay,
                "nesterov": t.nesterov, "schedule": t.schedule, "amp": t.amp, "data": cfg.data.name, "seed": cfg.seed}
    if r.policy == "early_stopping":
        settings.update(validate_every=r.validate_every, patience=r.patience, val_size=r.val_size)
        # only when set: rows of runs without them keep their key
        settings.update({k: getattr(r, k) for k in ("lr_drops", "min_delta", "validate_epochs") if getattr(r, k)})
    return settings


def summary_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """method x fraction: mean ± std over seeds of the trials' test accuracy (the final
    checkpoint's, or under early stopping the best-validation checkpoint's), the best test
    accuracy for reference."""
    g = accuracy.groupby(["target_model", "method", "fraction"])
    out = g.agg(test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", "std"),
                best_test_acc_mean=("best_test_acc", "mean"), seeds=("seed", "nunique"), n_train=("n_train", "first"))
    return out.reset_index()


def format_summary(accuracy: pd.DataFrame) -> str:
    """method x fraction table of test accuracy, mean ± std over seeds, per target model
    (what a job prints; the accuracy table itself is the result)."""
    table = summary_table(accuracy)
    blocks = []
    for target, rows in table.groupby("target_model"):
        cell = rows.apply(lambda r: f"{100 * r.test_acc_mean:.2f} ± {100 * (r.test_acc_std if r.seeds > 1 else 0):.2f}",
                          axis=1)
        grid = rows.assign(cell=cell).pivot(index="method", columns="fraction", values="cell").fillna("")
        grid = grid.reindex(sorted(grid.index, key=lambda m: (m != "full", m != "random", m)))  # references first
        grid.index.name = None  # one header line: the fractions
        early = "policy" in accuracy and (accuracy.policy[accuracy.target_model == target] == "early_stopping").all()
        at = " at the best-validation checkpoint" if early else ""
        title = f"test accuracy (%){at} of {target} by method and fraction, mean ± std over seeds:"
        blocks.append(f"{title}\n{grid.to_string()}")
    return "\n\n".join(blocks)


def print_summary(accuracy: pd.DataFrame) -> None:
    print(format_summary(accuracy), flush=True)


def measured_rates(rows: pd.DataFrame, stage_s: float, unit: Placement, tune_start_s: float | None,
                   packs: int) -> dict[str, Rate]:
    """The rates of the trials a run finished (``rows``, in ``packs`` packs, in ``stage_s``
    seconds): per optimiser step of each target model inside the trials (their evaluations
    shared over their steps); the stage's start, ``tune_start_s`` (Tune's start until it
    launched the first pack); and each pack's start (its worker process, imports and data
    load): the rest of the stage's wall time less the trials' own, per round of
    ``unit.parallel`` packs. Without ``tune_start_s`` (a restored run) only the step rates
    are measured."""
    if rows.empty or "steps" not in rows:
        return {}
    rates = {f"retrain.{target}.step": rate(float(g.wall_s.sum()), float(g.steps.sum()), "step", unit.device,
                                            unit.threads) for target, g in rows.groupby("target_model")}
    if tune_start_s is None:
        return rates
    packs = max(1, packs)
    rest = stage_s - tune_start_s - float(rows.wall_s.sum()) / min(unit.parallel, packs)
    rates["retrain.start"] = rate(tune_start_s, 1, "start", unit.device, unit.threads)
    rates["retrain.pack_start"] = rate(rest, math.ceil(packs / unit.parallel), "pack", unit.device, unit.threads)
    return rates
