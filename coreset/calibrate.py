"""``--plan --calibrate``: each stage's rates measured on a few batches of its real work,
on this process's devices with the threads its unit gets (``coreset/placement.py``):
training steps and evaluations of the source model, a slice of a gradient shard at a final
and at a factor-only checkpoint, one class of the right size scored by every configured
method, and a few retraining steps of each target model. Pure torch, no Ray: the cluster
layer runs it where the cluster's devices are (``coreset/cluster/plan.py``).

The models are at their initialisation (no checkpoint exists yet): a step costs the same,
but iterative selection methods (OMP, greedy submodular gains) may take another number of
iterations on trained gradients. Starts are measured as what a fresh worker does: import
the stage's modules (a child interpreter) and load the data.

Units that share a machine slow each other (memory bandwidth, caches, the driver): a CPU
class task or trial is timed with as many copies running at once as the stage would run on
this machine (:func:`sharing`), each in its own thread (torch and the Gram products release
the GIL); a GPU unit has its device to itself.
"""
from __future__ import annotations

import functools
import io
import itertools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from coreset import placement
from coreset.config import StudyConfig
from coreset.data import Datasets, probe_ids
from coreset.methods import Inputs, SelectionMethod
from coreset.models import build_model
from coreset.placement import Placement
from coreset.rates import Rate, rate
from coreset.stages import retrain, score
from coreset.stages.gradients import ShardTask, compute_shard, compute_task
from coreset.stages.train import build_source_model, trajectory_rows
from coreset.training import build_optimizer, build_scheduler, evaluate, prepare_model, train_one_epoch

log = logging.getLogger("coreset")
T = TypeVar("T")
STEPS = 5  # timed batches of each kind, after one untimed (allocations, loader start)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sharing(unit: Placement) -> int:
    """How many of a stage's units run at once on this machine: ``unit.parallel``, bounded by
    the CPUs here (a cluster spreads the rest over other nodes); 1 for a GPU unit."""
    if unit.gpus:
        return 1
    return max(1, min(unit.parallel, int((os.cpu_count() or 1) // max(unit.cpus, 1.0))))


def _at_once(job: Callable[[int], T], copies: int) -> list[T]:
    """``job(0) ... job(copies - 1)``, each in its own thread, all at once."""
    if copies == 1:
        return [job(0)]
    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(job, range(copies)))


def _device(unit: Placement) -> torch.device:
    return torch.device("cuda") if unit.gpus and torch.cuda.is_available() else torch.device("cpu")


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@functools.lru_cache(maxsize=1)
def import_seconds() -> float:
    """What a fresh Ray worker pays before its work: importing the stages' Ray half (torch,
    Ray Train and Tune among it) in a new interpreter; measured once per calibration."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import coreset.cluster.stages"], check=True, capture_output=True)
    return time.perf_counter() - start


def _steps_seconds(model: torch.nn.Module, batches: Iterator, cfg: StudyConfig, device: torch.device) -> float:
    """Seconds per training step over :data:`STEPS` steps (after one untimed)."""
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, STEPS + 1)
    train_one_epoch(model, itertools.islice(batches, 1), optimizer, scheduler, device, cfg.train.amp)
    seconds = _timed(lambda: train_one_epoch(model, itertools.islice(batches, STEPS), optimizer, scheduler,
                                             device, cfg.train.amp), device)
    return seconds / STEPS


def _eval_seconds(model: torch.nn.Module, datasets: Datasets, cfg: StudyConfig, device: torch.device) -> float:
    """Seconds per evaluated test image (two batches, after one untimed)."""
    size = cfg.train.eval_batch_size
    ids = np.arange(min(len(datasets.test), 3 * size))
    evaluate(model, datasets.batches("test", ids[:size], size), device, cfg.train.amp)
    rest = ids[size:] if len(ids) > size else ids
    return _timed(lambda: evaluate(model, datasets.batches("test", rest, size), device, cfg.train.amp),
                  device) / len(rest)


def train_rates(cfg: StudyConfig, datasets: Datasets, split: pd.DataFrame, resources: dict[str, float],
                load_s: float) -> dict[str, Rate]:
    """A source epoch per training image: its steps, the validation and test evaluations and
    the probe's gradients, from a few of each."""
    unit = placement.train(cfg, resources)
    device = _device(unit)
    train_ids = np.sort(split.sample_id[split.split == "train"].to_numpy())
    n_val = int((split.split == "val").sum())
    with _threads(unit.threads):
        model = prepare_model(build_source_model(cfg, datasets), device)
        batches = iter(datasets.batches("train", train_ids, cfg.train.batch_size, train=True, shuffle=True,
                                        seed=cfg.seed))
        step_s = _steps_seconds(model, batches, cfg, device)
        eval_s = _eval_seconds(model, datasets, cfg, device)
        probe = probe_ids(train_ids, cfg.train.probe_size, cfg.seed)
        probe_s = _timed(lambda: trajectory_rows(model, datasets, probe, 0, device, cfg.train.eval_batch_size), device)
    epoch_s = (len(train_ids) / cfg.train.batch_size * step_s / cfg.train.workers + (n_val + len(datasets.test))
               * eval_s + probe_s)
    start_s = import_seconds() + load_s
    return {"train.image": rate(epoch_s, len(train_ids), "image", unit.device, unit.threads),
            "train.start": rate(start_s, 1, "start", unit.device, unit.threads)}


def _class_ids(split: pd.DataFrame) -> np.ndarray:
    """The sorted train ids of the class whose size is the median: the typical class."""
    train = split[split.split == "train"]
    sizes = train.label.value_counts().sort_values()
    label = sizes.index[len(sizes) // 2]
    return np.sort(train.sample_id[train.label == label].to_numpy())


def _shard_piece(cfg: StudyConfig, ids: np.ndarray, final: bool, model: torch.nn.Module, datasets: Datasets,
                 device: torch.device) -> tuple[pa.Table, float]:
    """The gradient rows of ``ids`` (as a shard has them) and the seconds to compute and
    serialise them (as a shard file)."""
    task = ShardTask(0, 0, ids, final)
    out: list[pa.Table] = []

    def work() -> None:
        table = compute_shard(model, datasets, task, cfg.gradients, device)
        pq.write_table(table, io.BytesIO())
        out.append(table)
    seconds = _timed(work, device)
    return out[0], seconds


def gradient_rates(cfg: StudyConfig, datasets: Datasets, split: pd.DataFrame, resources: dict[str, float],
                   load_s: float, final_epoch: int) -> dict[str, Rate]:
    """Per row of a final and of a factor-only shard, from a slice of a few batches of one class,
    and per row of DeepFool's perturbations when a configured method reads them."""
    unit = placement.gradients(cfg, resources, 1 << 30)
    device = _device(unit)
    ids = _class_ids(split)
    piece = ids[: max(1, min(len(ids), STEPS * cfg.gradients.batch_size))]
    attacks = score.perturbation_settings(score.configured_inputs(cfg, final_epoch))
    rates: dict[str, Rate] = {}
    with _threads(unit.threads):
        model = prepare_model(build_source_model(cfg, datasets), device)
        _shard_piece(cfg, piece[: cfg.gradients.batch_size], True, model, datasets, device)  # untimed
        for final, key in ((True, "gradients.final_row"), (False, "gradients.factor_row")):
            _, seconds = _shard_piece(cfg, piece, final, model, datasets, device)
            rates[key] = rate(seconds, len(piece), "row", unit.device, unit.threads)
        if attacks:  # one batch: at the initialisation DeepFool may take more steps than on the trained model
            task = ShardTask(0, 0, piece[: cfg.gradients.batch_size], False, "perturbations", attacks[0])
            seconds = _timed(lambda: compute_task(model, datasets, task, cfg.gradients, device), device)
            rates["gradients.perturbation_row"] = rate(seconds, len(task.ids), "row", unit.device, unit.threads)
    start_s = import_seconds() + load_s
    rates["gradients.start"] = rate(start_s, 1, "start", unit.device, unit.threads)
    return rates


def _inputs_frame(rows: pa.Table, inputs: Inputs) -> pd.DataFrame:
    """``rows`` (one class at one checkpoint) as the score stage hands them to a method:
    repeated at each epoch the method reads, only its columns, fixed-size lists Arrow-backed;
    a tenth of them again as validation rows for a method that reads them, and the loss
    standing in for DeepFool's perturbation (its ranking costs the same on any numbers)."""
    epochs = inputs.epochs or (0,)
    parts = [rows.set_column(rows.schema.get_field_index("epoch"), "epoch",
                             pa.array(np.full(len(rows), e, dtype=np.int64))) for e in epochs]
    table = pa.concat_tables(parts)
    if inputs.table == "perturbations":
        table = table.append_column("perturbation", table.column("loss").cast(pa.float64()))
    columns = score.KEYS + [c for c in inputs.columns if c not in score.KEYS]
    frame = table.select(columns).to_pandas(
        types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_fixed_size_list(t) else None)
    if inputs.validation:
        frame = pd.concat([frame.assign(split="train"), frame.iloc[::10].assign(split="val")], ignore_index=True)
    return frame


def _scoring_seconds(methods: list[SelectionMethod], frame: pd.DataFrame) -> float:
    """The mean seconds of ``methods`` (copies of one method) scoring ``frame``, all at once."""
    cpu = torch.device("cpu")
    return float(np.mean(_at_once(lambda i: _timed(lambda: methods[i].score(frame), cpu), len(methods))))


def score_rates(cfg: StudyConfig, datasets: Datasets, split: pd.DataFrame, resources: dict[str, float],
                final_epoch: int) -> dict[str, Rate]:
    """Every configured method on one class of the typical size: per class for a method that
    scores by class (the thread of its task, as many at once as share this machine), per row
    for one that scores the whole table (from one class's rows: a linear extrapolation)."""
    ids = _class_ids(split)
    model = build_source_model(cfg, datasets)
    rows, _ = _shard_piece(cfg, ids, True, model, datasets, torch.device("cpu"))
    rates: dict[str, Rate] = {}
    for name in cfg.score.methods:
        method = score.build_method(cfg, name, final_epoch)
        inputs = method.inputs()
        by_class = inputs.by_class
        unit = placement.score_unit(resources) if by_class else placement.score_driver(resources)
        frame = _inputs_frame(rows, inputs)
        copies = [method] + [score.build_method(cfg, name, final_epoch) for _ in range(sharing(unit) - 1) if by_class]
        with _threads(unit.threads):
            seconds = _scoring_seconds(copies, frame)
        rates[f"score.{name}"] = (rate(seconds, 1, "class", unit.device, unit.threads) if by_class
                                  else rate(seconds, len(ids), "row", unit.device, unit.threads))
    driver = placement.score_driver(resources)
    rates["score.start"] = rate(import_seconds(), 1, "start", driver.device, driver.threads)
    return rates


def retrain_rates(cfg: StudyConfig, datasets: Datasets, split: pd.DataFrame, resources: dict[str, float],
                  load_s: float) -> dict[str, Rate]:
    """Per step of each target model (its evaluations shared over the grid's mean steps, under
    early stopping as if every trial ran its maximum; timed
    with as many trials at once as share this machine), per pack's start (a fresh
    interpreter's imports and the data load), and the stage's start."""
    unit = placement.trial(cfg, resources)
    device = _device(unit)
    train_ids = np.sort(split.sample_id[split.split == "train"].to_numpy())
    grid = retrain.trial_grid(cfg)
    steps = [retrain.schedule(cfg, retrain.trial_images(t, len(train_ids))) for t in grid]
    mean_steps = float(np.mean([i * per for i, per in steps]))
    mean_evals = float(np.mean([i for i, _ in steps]))
    val_ids = retrain.validation_ids(cfg, np.sort(split.sample_id[split.split == "val"].to_numpy()))
    evaluated = retrain.evaluated_images(cfg, mean_evals, len(datasets.test), len(val_ids))
    rates: dict[str, Rate] = {}
    # the data where a trial reads it (resident on its device when it fits), made once before
    # the trials timed at once share it
    data, _ = retrain.resident_data(cfg, datasets, device)

    def trial(target: str, seed: int) -> tuple[float, float]:
        """One trial's seconds per step and per evaluated test image, on the batches a trial reads."""
        model = prepare_model(build_model(target, datasets.spec), device)
        train, _, _ = retrain.trial_batches(cfg, datasets, train_ids, seed, device, None)
        return _steps_seconds(model, retrain.cycle_batches(train), cfg, device), _eval_seconds(model, data, cfg, device)

    with _threads(unit.threads):
        for target in sorted({t.target_model for t in grid}):
            # as many trials at once as share this machine: each one's steps and evaluations timed among them
            timed = _at_once(functools.partial(trial, target), sharing(unit))
            step_s = float(np.mean([t[0] for t in timed]))
            per_image = float(np.mean([t[1] for t in timed]))
            per_step = step_s + per_image * evaluated / max(mean_steps, 1.0)
            rates[f"retrain.{target}.step"] = Rate(per_step, "step", unit.device, unit.threads)
    imports = import_seconds()
    rates["retrain.pack_start"] = rate(imports + load_s, 1, "pack", unit.device, unit.threads)
    rates["retrain.start"] = rate(imports, 1, "start", unit.device, unit.threads)  # Tune's, once Ray is up
    return rates


def calibrate(cfg: StudyConfig, datasets: Datasets, split: pd.DataFrame, stages: list[str],
              resources: dict[str, float], load_s: float) -> dict[str, Rate]:
    """The rates of ``stages``, measured here; ``load_s``: what loading the data took."""
    final = cfg.train.epochs if cfg.gradients.final_epoch in ("best", "last") else int(cfg.gradients.final_epoch)
    rates: dict[str, Rate] = {}
    for name, measure in (("train", lambda: train_rates(cfg, datasets, split, resources, load_s)),
                          ("gradients", lambda: gradient_rates(cfg, datasets, split, resources, load_s, final)),
                          ("score", lambda: score_rates(cfg, datasets, split, resources, final)),
                          ("retrain", lambda: retrain_rates(cfg, datasets, split, resources, load_s))):
        if name in stages:
            start = time.perf_counter()
            rates.update(measure())
            log.info("plan: calibrated %s in %.1fs", name, time.perf_counter() - start)
    return {k: v.with_source("calibrated") for k, v in rates.items()}
