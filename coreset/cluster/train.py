"""Source training on Ray Train: one TorchTrainer worker, or data-parallel DDP workers
(NCCL on GPUs, gloo on CPUs). The study root, not Ray Train's storage, holds the
checkpoints and tables, so a restarted job resumes from the root whatever happened to
the cluster.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.util.queue import Queue

from coreset import layout, placement
from coreset.cli import configure_logging
from coreset.config import StudyConfig, config_from_dict
from coreset.errors import StageError, UserError
from coreset.rates import record_rates
from coreset.stages.train import SourceResult, TrainPlan, measured_rates, plan, read_source_result, train_source
from coreset.storage import StudyRoot
from coreset.tables import read_table

log = logging.getLogger("coreset")


def _train_loop(config: dict[str, Any]) -> None:
    configure_logging()
    torch.set_num_threads(int(config["threads"]))
    cfg = config_from_dict(config["study"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model

    try:
        train_source(cfg, StudyRoot(config["root"]), rank=rank, world=world, wrap=wrap, device=device,
                     report=lambda metrics: ray.train.report(metrics))
    except UserError as e:
        if world > 1:
            raise  # the other ranks wait in a collective: only Ray Train can stop them
        # A mistake no retry can fix (bad data, full or read-only root, foreign checkpoint):
        # raised, Ray Train would retry it and log its traceback; the driver raises it as one line.
        config["errors"].put(str(e))


def run_train(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float],
              work: TrainPlan | None = None) -> SourceResult:
    """Train the source model on the cluster (skipped when the root already holds it)."""
    work = work or plan(cfg, root)
    if work.result is not None:
        log.debug("source training already finished in %s (best epoch %d)", root.url(), work.result.best_epoch)
        return work.result
    start = time.perf_counter()
    workers, unit = cfg.train.workers, placement.train(cfg, resources)
    use_gpu, cpus = unit.gpus > 0, unit.threads
    errors = Queue(actor_options={"num_cpus": 0})
    trainer = ray.train.torch.TorchTrainer(
        _train_loop,
        train_loop_config={"study": cfg.to_dict(), "root": root.uri, "threads": cpus, "use_gpu": use_gpu,
                           "errors": errors},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(name=f"{cfg.name}-source", storage_path=_storage_path(root),
                                       failure_config=ray.train.FailureConfig(max_failures=2)),
    )
    watcher = EpochWatcher(cfg, root, work.epochs_done)
    # Ray Train installs its own SIGINT handler (abort its controller) and leaves it installed
    # after fit: a later Ctrl-C, or the lease's stop signal, would then call a dead actor.
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with watcher:
            trainer.fit()
        if not errors.empty():
            raise StageError(errors.get_nowait())
    finally:
        signal.signal(signal.SIGINT, sigint)
        errors.shutdown()
    result = read_source_result(root)
    if result is None:
        raise StageError(f"source training ended without writing {root.url('source/done.json')}")
    record_rates(root, measured_rates(root, work.epochs_done + 1, time.perf_counter() - start, unit))
    return result


class EpochWatcher:
    """Logs the latest finished epoch from the root's training log, from the driver, at most
    every ``every_s`` seconds and once at the end, while Ray Train runs (the workers' own lines
    stay in Ray's session logs): the root says what is done."""

    def __init__(self, cfg: StudyConfig, root: StudyRoot, epochs_done: int, every_s: float = 30.0,
                 poll_s: float = 5.0) -> None:
        self.cfg, self.root, self.every_s, self.poll_s = cfg, root, every_s, poll_s
        self.logged = epochs_done
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epoch-watcher", daemon=True)

    def __enter__(self) -> EpochWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll(force=True)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self, force: bool = False) -> None:
        if not (force or time.monotonic() - self.last >= self.every_s) or not self.root.exists(layout.TRAIN_LOG):
            return
        try:
            rows = read_table(self.root, layout.TRAIN_LOG, "train_log")
        except UserError:  # being replaced right now: read it next time
            return
        if rows.empty or int(rows.epoch.max()) <= self.logged:
            return
        row = rows.iloc[-1]
        log.info("train: epoch %d/%d: train loss %.4f acc %.4f | val %.4f | test %.4f | %.1fs", row.epoch,
                 self.cfg.train.epochs, row.train_loss, row.train_acc, row.val_acc, row.test_acc, row.wall_s)
        self.logged, self.last = int(row.epoch), time.monotonic()


def _storage_path(root: StudyRoot) -> str:
    return root.url("source/ray_train")
