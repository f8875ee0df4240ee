"""``--plan``: what a study will do and what it will cost, before it runs. Pure: the job
hands it the config, the root, the data's counts, the cluster's resources and the rates
(``coreset/rates.py``: recorded by earlier runs in the root, or calibrated), and it writes
nothing.

Per stage and kind of work unit (source epochs; gradient shards x checkpoints; class tasks
per method; trials; figures) a row says how many units there are, how many the root already
holds, what each asks for and how many run at once (``coreset/placement.py``, the rule the
stages start work with), and the estimate: the stage's start, plus the units left in rounds
of ``parallel`` at the rate's seconds per unit. Units without a rate on the unit's device
(a CPU-measured rate for a GPU cluster, or a stage that never ran here) get no estimate,
and the total says so rather than guessing.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from coreset import layout, placement
from coreset.config import StudyConfig, method_of
from coreset.data import Datasets, train_val_split
from coreset.errors import StageError
from coreset.placement import Placement
from coreset.progress import duration
from coreset.rates import Rate
from coreset.stages import gradients, report, retrain, score, train
from coreset.storage import StudyRoot
from coreset.tables import read_table


@dataclass(frozen=True)
class PlanRow:
    stage: str
    unit: str  # what one unit of work is
    units: int
    done: int  # already in the root
    cpus: float  # per unit
    gpus: float
    parallel: int  # units at once on the cluster
    seconds_each: float | None  # estimated; None: no rate for this unit's device
    start_s: float | None  # the stage's start-up, once, when it has work left (None: no rate)
    rate: str  # the estimate's source: "recorded", "calibrated" or "none"
    note: str = ""  # what the estimate assumes, where that is not plain

    @property
    def todo(self) -> int:
        return self.units - self.done

    @property
    def wall_s(self) -> float | None:
        if self.todo == 0:
            return 0.0
        if self.seconds_each is None:
            return None
        return (self.start_s or 0.0) + math.ceil(self.todo / self.parallel) * self.seconds_each

    @property
    def gpu_hours(self) -> float | None:
        if self.seconds_each is None:
            return None if self.todo else 0.0
        return self.todo * self.seconds_each * self.gpus / 3600


@dataclass(frozen=True)
class Counts:
    """The data's counts the plan needs: the study's split (recorded, or drawn as the train
    stage will draw it) and the test set's size."""

    split: pd.DataFrame
    n_test: int

    @functools.cached_property
    def train(self) -> pd.Series:
        """The train split's labels by sample id."""
        rows = self.split[self.split.split == "train"]
        return rows.set_index("sample_id").label.sort_index()

    @classmethod
    def of(cls, cfg: StudyConfig, root: StudyRoot, datasets: Datasets) -> Counts:
        if root.exists(layout.SPLIT):
            split = read_table(root, layout.SPLIT, "split")
        else:
            split = train_val_split(datasets.train.labels.numpy(), cfg.data.val_fraction, cfg.seed)
        return cls(split, len(datasets.test))


class _Rates:
    """Looks up a rate for a unit's device; remembers which source it came from."""

    def __init__(self, rates: dict[str, Rate]) -> None:
        self.rates = rates

    def get(self, key: str, unit: Placement) -> Rate | None:
        found = self.rates.get(key)
        return found if found is not None and found.device == unit.device else None

    def seconds(self, key: str, unit: Placement, count: float) -> float | None:
        found = self.get(key, unit)
        return None if found is None else found.seconds * count

    def source(self, keys: list[str], unit: Placement) -> str:
        found = [self.get(k, unit) for k in keys]
        if any(f is None for f in found):
            return "none"
        return "calibrated" if any(f.source == "calibrated" for f in found) else "recorded"


def _row(stage: str, unit_name: str, units: int, done: int, unit: Placement, seconds_each: float | None,
         start_s: float | None, source: str, note: str = "") -> PlanRow:
    if seconds_each is None or start_s is None:
        seconds_each, start_s, source = None, None, "none"
    return PlanRow(stage, unit_name, units, done, unit.cpus, unit.gpus, unit.parallel, seconds_each, start_s, source,
                   note)


def _train(cfg: StudyConfig, root: StudyRoot, counts: Counts, resources: dict[str, float], rates: _Rates
           ) -> list[PlanRow]:
    work = train.plan(cfg, root)
    unit = placement.train(cfg, resources)
    done = work.epochs if work.finished else work.epochs_done
    each = rates.seconds("train.image", unit, len(counts.train))
    return [_row("train", "source epoch", work.epochs, done, unit, each, rates.seconds("train.start", unit, 1),
                 rates.source(["train.image", "train.start"], unit))]


def _final_and_epochs(cfg: StudyConfig, root: StudyRoot) -> tuple[int, int]:
    """The final checkpoint and the epochs source training ran, or will run (with early
    stopping or ``final_epoch: best`` this is the last epoch: an upper bound)."""
    source = train.read_source_result(root)
    if source is not None:
        return gradients.final_epoch(cfg.gradients, source), source.epochs_run
    fixed = cfg.gradients.final_epoch
    return (cfg.train.epochs if fixed in ("best", "last") else int(fixed)), cfg.train.epochs


def _shards(cfg: StudyConfig, counts: Counts) -> list[np.ndarray]:
    return gradients.work_shards(cfg, counts.train)[0]


_GRADIENT_UNITS = {("gradients", True): "shard x final checkpoint", ("gradients", False): "shard x factor checkpoint",
                   ("validation", False): "validation unit (forward)", ("perturbations", False): "shard x DeepFool"}


def _gradients(cfg: StudyConfig, root: StudyRoot, counts: Counts, resources: dict[str, float], rates: _Rates
               ) -> list[PlanRow]:
    if train.read_source_result(root) is not None:
        recorded = gradients.plan(cfg, root)
        tasks, todo = recorded.tasks, recorded.todo
    else:
        final, epochs_run = _final_and_epochs(cfg, root)
        tasks = todo = gradients.table_tasks(cfg, counts.split, final, epochs_run)[0]
    unit = placement.gradients(cfg, resources, max(1, len(todo)))
    rows = []
    start = rates.seconds("gradients.start", unit, 1)
    for kind, name in _GRADIENT_UNITS.items():
        mine = [t for t in tasks if (t.table, t.final) == kind]
        if not mine:
            continue
        left = [t for t in todo if (t.table, t.final) == kind]
        size = np.mean([len(t.ids) for t in (left or mine)])
        key = gradients.rate_key(mine[0])
        rows.append(_row("gradients", name, len(mine), len(mine) - len(left), unit,
                         rates.seconds(key, unit, float(size)), start,
                         rates.source([key, "gradients.start"], unit)))
        start = 0.0 if start is not None else None  # the stage starts once
    return rows


def _score(cfg: StudyConfig, root: StudyRoot, counts: Counts, resources: dict[str, float], rates: _Rates
           ) -> list[PlanRow]:
    if root.exists(layout.GRADIENTS_MANIFEST):
        work = score.plan(cfg, root)
        table = work.table
        methods = [(w.name, w.method, w.done) for w in work.methods]
    else:
        final, _ = _final_and_epochs(cfg, root)
        shards = _shards(cfg, counts)
        table = {"shard_labels": gradients.shard_labels(shards, counts.train)}
        methods = [(name, score.build_method(cfg, name, final), False) for name in cfg.score.instances]
    units = score.class_units(table)
    classes = counts.train.nunique()
    driver = placement.score_driver(resources)
    start = rates.seconds("score.start", driver, 1)
    rows = []
    for name, method, done in methods:
        key = f"score.{method_of(name)}"  # a method's instances share its rate
        if method.inputs().by_class:
            unit = placement.score_unit(resources)
            each = rates.seconds(key, unit, classes / len(units))
            rows.append(_row("score", f"class task: {name}", len(units), len(units) if done else 0, unit, each,
                             start, rates.source([key, "score.start"], unit)))
        else:
            each = rates.seconds(key, driver, len(counts.train))
            rows.append(_row("score", f"whole table: {name}", 1, int(done), driver, each, start,
                             rates.source([key, "score.start"], driver)))
        start = 0.0 if start is not None else None
    return rows


STOPPED_SAMPLE = 8  # finished trials read per method and fraction for the share of their maximum they ran

_ShareKey = tuple[str, float] | float | None


def _stopped_shares(cfg: StudyConfig, root: StudyRoot, work: retrain.RetrainPlan, n_train: int
                    ) -> dict[_ShareKey, float]:
    """Under early stopping, the mean share of its maximum steps that the root's finished
    trials ran: per (method, fraction), per fraction and over all (``None``); empty without
    finished trials. A trial stops when validation accuracy stalls, which no count foretells,
    and most stop far short of their bound (MNIST's 10% subsets ran 1,100-2,600 of their
    8,000 steps), but trials of one method and fraction stop at a similar share: a swept
    method's new settings are timed by its finished ones (GradSimCore's 10% trials ran 1.4x
    the steps of the fraction's average). At most ``STOPPED_SAMPLE`` rows a method and
    fraction are read."""
    if cfg.retrain.policy != "early_stopping" or not work.pending:
        return {}
    pending = set(work.pending)
    groups: dict[tuple[str, float], list[float]] = {}
    for trial in work.grid:
        shares = groups.setdefault((method_of(trial.method), trial.fraction), [])
        if trial in pending or len(shares) >= STOPPED_SAMPLE:
            continue
        steps = read_table(root, work.row_path(trial), "accuracy").steps.iloc[0]
        shares.append(min(1.0, float(steps) / retrain.trial_steps(cfg, trial, n_train)))
    pooled: dict[_ShareKey, list[float]] = {}
    for (method, fraction), shares in groups.items():
        for key in ((method, fraction), fraction, None):
            pooled.setdefault(key, []).extend(shares)
    return {key: float(np.mean(shares)) for key, shares in pooled.items() if shares}


def _stopped_share(shares: dict[_ShareKey, float], trial: retrain.Trial) -> float:
    """The share of its maximum a pending trial is timed at: its method's and fraction's, else
    its fraction's, else every finished trial's, else 1 (the maximum)."""
    for key in ((method_of(trial.method), trial.fraction), trial.fraction, None):
        if key in shares:
            return shares[key]
    return 1.0


def _retrain(cfg: StudyConfig, root: StudyRoot, counts: Counts, resources: dict[str, float], rates: _Rates
             ) -> list[PlanRow]:
    """Per trial: its steps, and its share of its pack's start (the packs the stage would run).
    Under early stopping a trial's steps are its maximum, or the share of it that the root's
    finished trials of its method and fraction ran (:func:`_stopped_shares`); the note says which."""
    work = retrain.plan(cfg, root)
    unit = placement.trial(cfg, resources)
    n_train = len(counts.train)
    trials = work.pending or work.grid
    shares = _stopped_shares(cfg, root, work, n_train)
    per_trial = []
    for trial in trials:
        steps = retrain.trial_steps(cfg, trial, n_train) * _stopped_share(shares, trial)
        per_trial.append(rates.seconds(f"retrain.{trial.target_model}.step", unit, steps))
    pack_start = rates.seconds("retrain.pack_start", unit, 1)
    packs = len(retrain.trial_packs(cfg, trials, n_train, unit.parallel))
    each = (None if pack_start is None or any(s is None for s in per_trial)
            else float(np.mean(per_trial)) + pack_start * packs / len(trials))
    keys = ["retrain.start", "retrain.pack_start"] + sorted({f"retrain.{t.target_model}.step" for t in work.grid})
    note = ""
    if cfg.retrain.policy == "early_stopping":
        note = ("early stopping: trials timed at the share of their maximum that the finished ones ran" if shares
                else "early stopping: trials timed at their maximum length (most stop sooner)")
    return [_row("retrain", "trial", len(work.grid), len(work.grid) - len(work.pending), unit, each,
                 rates.seconds("retrain.start", unit, 1), rates.source(keys, unit), note)]


def _report(cfg: StudyConfig, root: StudyRoot, counts: Counts, resources: dict[str, float], rates: _Rates
            ) -> list[PlanRow]:
    """Every figure the report can draw; done when the published report is up to date."""
    figures = len(report.SPECS)
    done = 0
    if root.exists(layout.REPORT_MANIFEST):
        work = report.plan(cfg, root)
        figures = len(work.figures) + len(work.missing)
        done = len(work.figures) - len(work.todo)
    unit = placement.score_driver(resources)
    return [_row("report", "figure", figures, done, unit, rates.seconds("report.figure", unit, 1), 0.0,
                 rates.source(["report.figure"], unit))]


_STAGES = {"train": _train, "gradients": _gradients, "score": _score, "retrain": _retrain, "report": _report}


def plan_study(cfg: StudyConfig, root: StudyRoot, stages: list[str], counts: Counts,
               resources: dict[str, float], rates: dict[str, Rate]) -> list[PlanRow]:
    """The plan of ``stages`` (in the stage table's order) of ``cfg`` at ``root``.

    A stage whose inputs an earlier stage has not yet written is planned from the counts
    that stage will produce (the split, its shards and classes)."""
    found = _Rates(rates)
    rows: list[PlanRow] = []
    for name in stages:
        try:
            rows += _STAGES[name](cfg, root, counts, resources, found)
        except StageError as e:  # a contradiction the stage itself would refuse with
            raise StageError(f"cannot plan stage {name}: {e}") from e
    return rows


def plan_frame(rows: list[PlanRow]) -> pd.DataFrame:
    """The plan as a table (``--plan-out``): one row per stage and unit kind."""
    frame = pd.DataFrame([{**asdict(r), "todo": r.todo, "wall_s": r.wall_s, "gpu_hours": r.gpu_hours} for r in rows])
    return frame.astype({"seconds_each": float, "start_s": float, "wall_s": float, "gpu_hours": float})


def _asks(row: PlanRow) -> str:
    parts = [f"{row.cpus:g} CPU"] if row.cpus else []
    if row.gpus:
        parts.append(f"{row.gpus:g} GPU")
    return ", ".join(parts) or "driver"


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.1f}s" if seconds < 10 else duration(seconds)


def format_plan(rows: list[PlanRow], resources: dict[str, float], calibrated: bool = False) -> list[str]:
    """The console lines of a plan: a table and the totals (``calibrated``: the rates were
    just measured, so what still lacks one is measured only when it runs)."""
    table = pd.DataFrame([{"stage": r.stage, "unit": r.unit, "units": r.units, "done": r.done,
                           "each asks": _asks(r), "at once": r.parallel,
                           "per unit": _time(r.seconds_each) if r.todo else "-",
                           "wall": _time(r.wall_s), "rate": r.rate if r.todo else "-"} for r in rows])
    lines = table.to_string(index=False).splitlines()
    lines += [f"{r.stage}: {r.note}" for r in rows if r.note and r.todo]
    stage_s: dict[str, float | None] = {}
    for r in rows:
        if r.stage not in stage_s or stage_s[r.stage] is not None:
            stage_s[r.stage] = None if r.wall_s is None else (stage_s.get(r.stage) or 0.0) + r.wall_s
    known = [s for s in stage_s.values() if s is not None]
    gpu_h = sum(r.gpu_hours or 0.0 for r in rows)
    where = f"{int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs"
    total = f"estimated wall time {duration(sum(known))} on {where}, {gpu_h:.2f} GPU-hours"
    unknown = sorted(s for s, v in stage_s.items() if v is None)
    if unknown:
        hint = "measured when it first runs" if calibrated else "run with --calibrate"
        total += f"; no measured rate for {', '.join(unknown)} on this cluster's devices ({hint})"
    return [*lines, total]
