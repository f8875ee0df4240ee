"""The gradient stage on Ray: a pool of actors (one per GPU, or CPU workers) shards the
train split; each actor loads the data once and each checkpoint once, and writes one
Parquet file per shard atomically (and so the validation and perturbation tables' files,
when a configured method reads them). Finished shards are skipped on a re-run, and a shard
re-done after an actor died overwrites the same file, so the table never holds a
duplicate row.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import ray
import torch

from coreset import layout, placement
from coreset.config import StudyConfig, config_from_dict
from coreset.data import load_datasets
from coreset.devices import pick_device
from coreset.progress import Progress
from coreset.rates import record_rates
from coreset.stages.gradients import (
    GradientsPlan,
    ShardTask,
    batch_bound_rows,
    compute_task,
    measured_rates,
    plan,
    record_manifest,
)
from coreset.stages.train import load_source_model
from coreset.storage import StudyRoot
from coreset.tables import write_table

log = logging.getLogger("coreset")


@dataclass
class GradientsSummary:
    shards_total: int
    shards_computed: int
    shards_skipped: int
    rows_per_epoch: int
    epochs: list[int]
    final_epoch: int
    wall_s: float
    compute_s: float = 0.0  # summed over shards, in the actors: wall_s minus this is start-up and waiting


class GradientWorker:
    """Holds the dataset and the current checkpoint's model; computes and writes shards."""

    def __init__(self, study: dict, root_uri: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.cfg = config_from_dict(study)
        self.root = StudyRoot(root_uri)
        self.device = pick_device(self.cfg.train.use_gpu)
        self.datasets = load_datasets(self.cfg.data)
        self.epoch, self.model = -1, None

    def _model_at(self, epoch: int):
        if epoch != self.epoch:
            self.model = load_source_model(self.cfg, self.root, self.datasets, epoch, self.device)
            self.epoch = epoch
        return self.model

    def run(self, task: ShardTask) -> tuple[int, int, float]:
        start = time.perf_counter()
        table = compute_task(self._model_at(task.epoch), self.datasets, task, self.cfg.gradients, self.device)
        write_table(self.root, task.path, table, task.kind)
        return task.epoch, task.shard, time.perf_counter() - start

    def bound(self, train_ids: np.ndarray, epoch: int) -> list[dict[str, object]]:
        return batch_bound_rows(self._model_at(epoch), self.datasets, train_ids, epoch, self.cfg.gradients,
                                self.cfg.seed, self.device)


def run_gradients(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float],
                  work: GradientsPlan | None = None) -> GradientsSummary:
    """Compute every missing shard of the study's gradient table (``work``: its plan, when the
    caller already has it), and the batch-bound table."""
    start = time.perf_counter()
    work = work or plan(cfg, root)
    record_manifest(root, work)
    removed = [root.remove_partial_writes(folder) for folder in (layout.GRADIENTS, layout.VALIDATION,
                                                                 layout.PERTURBATIONS)]
    if any(removed):  # no actor of this stage runs yet
        log.info("gradients: removed partial files of an interrupted run")
    done = len(work.tasks) - len(work.todo)
    log.debug("gradients: %d shards, %d already done, %d to compute", len(work.tasks), done, len(work.todo))
    times: list[tuple[ShardTask, float]] = []
    if work.todo or work.need_bound:
        unit = placement.gradients(cfg, resources, max(1, len(work.todo)))
        pool_actors = _start_workers(cfg, root, unit)
        times = _run_shards(pool_actors, work.todo, Progress("gradients: shards", len(work.todo)))
        if work.need_bound:
            rows = ray.get(pool_actors[0].bound.remote(work.train_ids, work.final_epoch))
            write_table(root, layout.BATCH_BOUND, pd.DataFrame(rows), "batch_bound")
        for a in pool_actors:
            ray.kill(a)
        record_rates(root, measured_rates(times, time.perf_counter() - start, unit))
    return GradientsSummary(len(work.tasks), len(work.todo), done, len(work.train_ids),
                            sorted({t.epoch for t in work.tasks}), work.final_epoch, time.perf_counter() - start,
                            sum(s for _, s in times))


def _run_shards(actors: list, todo: list[ShardTask], progress: Progress) -> list[tuple[ShardTask, float]]:
    """Each actor computes one shard at a time. After a failure no new shard starts; the ones
    in flight finish (their files are kept) and are fetched, so that Ray reports no second,
    unhandled error, and the first error is raised. Returns each shard's seconds in its actor."""
    idle, pending, running = list(actors), list(todo), {}
    error: BaseException | None = None
    times: list[tuple[ShardTask, float]] = []
    while running or (pending and error is None):
        while idle and pending and error is None:
            actor, task = idle.pop(), pending.pop(0)
            running[actor.run.remote(task)] = (actor, task)
        (ref,), _ = ray.wait(list(running), num_returns=1)
        actor, task = running.pop(ref)
        idle.append(actor)
        try:
            epoch, shard, seconds = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - re-raised once the shards in flight are done
            error = error or e
            continue
        progress.step()
        times.append((task, seconds))
        log.debug("epoch %d shard %d: %.1fs", epoch, shard, seconds)
    if error is not None:
        for a in actors:
            ray.kill(a)
        raise error
    return times


def _start_workers(cfg: StudyConfig, root: StudyRoot, unit: placement.Placement) -> list:
    options = unit.ray_options()
    n, threads = unit.parallel, unit.threads
    actor = ray.remote(max_restarts=3, max_task_retries=3)(GradientWorker)
    log.debug("gradients: %d actor(s), %s each", n, options)
    # SPREAD: one actor per node before two on one (each reads its own shards and checkpoints).
    return [actor.options(**options, scheduling_strategy="SPREAD").remote(cfg.to_dict(), root.uri, threads)
            for _ in range(n)]
