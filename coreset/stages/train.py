"""Source training: the model whose gradients score the training images.

Epoch 0 is the random initialisation; after each epoch the weights are checkpointed,
the training log gains a row (train loss/accuracy, validation and test accuracy, wall
seconds) and the trajectory table gains the last-layer gradient norms of a fixed probe
set (the heatmaps of the gradient-magnitude paper), and ``source/correctness/`` a file of
every training image's correctness in that epoch's training forward passes (Forgetting's
input; ranks' rows are gathered to rank 0). An interrupted run resumes from
its last completed epoch. Early stopping watches validation accuracy; the best
validation epoch is recorded as the trained model.

Data-parallel training passes ``rank``/``world`` and a ``wrap`` (DDP); rank 0 alone
evaluates and writes. The resume plan (:func:`plan`) reads how far the root got.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from coreset import layout
from coreset.checkpoints import load_checkpoint, model_meta, save_checkpoint
from coreset.config import StudyConfig
from coreset.data import Datasets, load_datasets, probe_ids, split_ids, train_val_split
from coreset.data.identity import check_same_source
from coreset.devices import pick_device
from coreset.errors import DataError
from coreset.gradients.last_layer import last_layer_factors, last_layer_norms
from coreset.models import Classifier, build_model
from coreset.placement import Placement
from coreset.progress import Progress
from coreset.rates import Rate, rate
from coreset.storage import StudyRoot
from coreset.tables import read_table, write_table
from coreset.training import build_optimizer, build_scheduler, evaluate, prepare_model, train_one_epoch

log = logging.getLogger("coreset")


@dataclass
class SourceResult:
    epochs_run: int
    best_epoch: int
    best_val_acc: float
    final_test_acc: float
    stopped_early: bool


@dataclass(frozen=True)
class TrainPlan:
    """How far source training got: ``epochs_done`` of ``epochs`` (resumable), or finished
    (``result``: early stopping may finish it before ``epochs``)."""

    epochs: int
    epochs_done: int
    result: SourceResult | None

    @property
    def finished(self) -> bool:
        return self.result is not None

    def summary(self) -> str:
        if self.finished:
            return "finished before"
        return f"{self.epochs - self.epochs_done} of {self.epochs} epochs to run"


def plan(cfg: StudyConfig, root: StudyRoot) -> TrainPlan:
    """The resume plan of source training, from the root's records (no checkpoint is read)."""
    result = read_source_result(root)
    done = 0
    if result is not None:
        done = result.epochs_run
    elif root.exists(layout.RESUME) and root.exists(layout.TRAIN_LOG):
        done = int(read_table(root, layout.TRAIN_LOG, "train_log").epoch.max())
    return TrainPlan(cfg.train.epochs, done, result)


def load_split(cfg: StudyConfig, root: StudyRoot, datasets: Datasets, write: bool = True) -> pd.DataFrame:
    """The study's validation split: read from the root, or drawn from the seed and recorded
    (with the unreadable images a folder dataset left out, on which the ids depend)."""
    if root.exists(layout.SPLIT):
        split = read_table(root, layout.SPLIT, "split")
        _check_skipped(cfg, root, datasets)  # first: it says why the train set changed
        if (len(split) != len(datasets.train)
                or not np.array_equal(split.label.to_numpy(), datasets.train.labels.numpy())):
            raise DataError(f"{root.url(layout.SPLIT)} does not match the {cfg.data.name} train set "
                             f"({len(split)} rows vs {len(datasets.train)} images); use a new study root")
        _check_source(root, datasets, write)
        return split
    split = train_val_split(datasets.train.labels.numpy(), cfg.data.val_fraction, cfg.seed)
    if write:
        skipped = skipped_files(datasets)
        if len(skipped):
            write_table(root, layout.SKIPPED_FILES, skipped, "skipped_files")
        write_table(root, layout.SPLIT, split, "split")
        record_data_source(root, datasets)
    return split


def check_study_data(cfg: StudyConfig, root: StudyRoot, datasets: Datasets) -> None:
    """A root with a recorded split must still get the same data: same train labels, same
    unreadable files left out. Otherwise the sample ids of its tables would silently shift."""
    if root.exists(layout.SPLIT):
        load_split(cfg, root, datasets, write=False)


def record_data_source(root: StudyRoot, datasets: Datasets) -> None:
    """Record what data the study reads (:mod:`coreset.data.identity`); a job on an older root
    that has a split but no record records it then."""
    root.write_bytes(layout.DATA_SOURCE, json.dumps(datasets.identity, indent=1).encode())


def record_missing_data_source(root: StudyRoot, datasets: Datasets) -> None:
    """For a root started before the record existed (its data was checked against the split)."""
    if root.exists(layout.SPLIT) and not root.exists(layout.DATA_SOURCE):
        record_data_source(root, datasets)


def _check_source(root: StudyRoot, datasets: Datasets, write: bool) -> None:
    if root.exists(layout.DATA_SOURCE):
        check_same_source(json.loads(root.read_bytes(layout.DATA_SOURCE)), datasets.identity,
                          root.url(layout.DATA_SOURCE))
    elif write:
        record_data_source(root, datasets)


def skipped_files(datasets: Datasets) -> pd.DataFrame:
    """``split, path, error`` of the unreadable images left out (``data.corrupt=skip``)."""
    rows = [{"split": name, "path": path, "error": why}
            for name, ds in (("train", datasets.train), ("test", datasets.test)) for path, why in ds.skipped]
    return pd.DataFrame(rows, columns=["split", "path", "error"])


def _check_skipped(cfg: StudyConfig, root: StudyRoot, datasets: Datasets) -> None:
    recorded = read_table(root, layout.SKIPPED_FILES, "skipped_files") if root.exists(layout.SKIPPED_FILES) \
        else skipped_files(datasets).iloc[:0]
    now = skipped_files(datasets)
    if list(zip(recorded.split, recorded.path, strict=False)) != list(zip(now.split, now.path, strict=False)):
        raise DataError(f"{cfg.data.root} now leaves out {len(now)} unreadable images, the study in {root.url()} "
                         f"left out {len(recorded)} ({layout.SKIPPED_FILES}); its sample ids would shift: "
                         f"restore the data or use a new --root")


def recorded_train_ids(root: StudyRoot) -> np.ndarray:
    """The train-split ids that source training recorded (later stages read, never redraw, them)."""
    return split_ids(read_table(root, layout.SPLIT, "split"))


def source_seed(cfg: StudyConfig) -> int:
    """The seed of the source model: ``train.seed``, else the study's."""
    return cfg.seed if cfg.train.seed is None else cfg.train.seed


def build_source_model(cfg: StudyConfig, datasets: Datasets) -> Classifier:
    torch.manual_seed(source_seed(cfg))
    return build_model(cfg.model.name, datasets.spec, pretrained=cfg.model.pretrained)


def source_meta(cfg: StudyConfig, datasets: Datasets) -> dict[str, Any]:
    return model_meta(cfg.model.name, cfg.data.name, datasets.train.num_classes, datasets.size)


def trajectory_rows(model: Classifier, datasets: Datasets, ids: np.ndarray, epoch: int, device: torch.device,
                    batch_size: int) -> pd.DataFrame:
    """Loss and last-layer gradient norms (closed form) of the probe images at ``epoch``."""
    model.eval()
    parts = []
    for x, y, sid in datasets.batches("train", ids, batch_size):
        f = last_layer_factors(model, x.to(device), y.to(device))
        norms = last_layer_norms(f.err, f.emb)
        parts.append(pd.DataFrame({"sample_id": sid.numpy(), "label": y.numpy(), "epoch": epoch,
                                   "loss": f.loss.cpu().numpy(),
                                   **{k: v.cpu().double().numpy() for k, v in norms.items()}}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def train_source(cfg: StudyConfig, root: StudyRoot, rank: int = 0, world: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
                 report: Callable[[dict[str, Any]], None] = lambda metrics: None,
                 device: torch.device | None = None) -> SourceResult:
    """Train (or resume training) the source model of ``cfg`` under ``root``."""
    device = device or pick_device(cfg.train.use_gpu)
    lead = rank == 0
    datasets = load_datasets(cfg.data)
    split = load_split(cfg, root, datasets, write=lead)
    train_ids, val_ids = split_ids(split, "train"), split_ids(split, "val")
    probe = probe_ids(train_ids, cfg.train.probe_size, cfg.seed)
    meta = source_meta(cfg, datasets)

    model = prepare_model(build_source_model(cfg, datasets), device)
    train_batches = datasets.batches("train", train_ids, cfg.train.batch_size, train=True, shuffle=True,
                                     seed=source_seed(cfg), rank=rank, world=world)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, len(train_batches))
    history = pd.DataFrame()
    trajectory = pd.DataFrame()
    start_epoch = 1
    if root.exists(layout.RESUME):
        state = load_checkpoint(root, layout.RESUME, meta, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        history = read_table(root, layout.TRAIN_LOG, "train_log")
        history = history[history.epoch < start_epoch]
        if root.exists(layout.TRAJECTORY):
            trajectory = read_table(root, layout.TRAJECTORY, "trajectory")
            trajectory = trajectory[trajectory.epoch < start_epoch]
        log.info("resuming %s from epoch %d", root.url(), start_epoch - 1)
    elif lead:
        save_checkpoint(root, layout.checkpoint(0), {"model": model.state_dict(), "epoch": 0, "meta": meta})
        trajectory = trajectory_rows(model, datasets, probe, 0, device, cfg.train.eval_batch_size)
        write_table(root, layout.TRAJECTORY, trajectory, "trajectory")

    net = wrap(model)
    stopped_early = False
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        epoch_start = time.perf_counter()
        train_batches.set_epoch(epoch)
        progress = Progress(f"epoch {epoch}/{cfg.train.epochs}", len(train_batches))
        outcomes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        stats = train_one_epoch(net, train_batches, optimizer, scheduler, device, cfg.train.amp, progress, outcomes)
        presented = _gather(correctness_rows(outcomes, epoch), world)
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc}
        if lead:
            val = evaluate(model, datasets.batches("train", val_ids, cfg.train.eval_batch_size), device,
                           cfg.train.amp) if len(val_ids) else None
            test = evaluate(model, datasets.batches("test", None, cfg.train.eval_batch_size), device, cfg.train.amp)
            trajectory = pd.concat([trajectory, trajectory_rows(model, datasets, probe, epoch, device,
                                                               cfg.train.eval_batch_size)], ignore_index=True)
            # wall_s: the training loop; epoch_s: the whole epoch but its writes (the plan's rate)
            row = {"epoch": epoch, "lr": scheduler.get_last_lr()[0], "train_loss": stats.loss, "train_acc": stats.acc,
                   "val_acc": val.acc if val else float("nan"), "test_acc": test.acc, "wall_s": stats.wall_s,
                   "samples_per_s": stats.n * world / max(stats.wall_s, 1e-9),
                   "epoch_s": time.perf_counter() - epoch_start}
            history = pd.concat([history, pd.DataFrame([row])], ignore_index=True)
            save_checkpoint(root, layout.checkpoint(epoch), {"model": model.state_dict(), "epoch": epoch, "meta": meta})
            write_table(root, layout.correctness(epoch), presented, "correctness")
            write_table(root, layout.TRAJECTORY, trajectory, "trajectory")
            write_table(root, layout.TRAIN_LOG, history, "train_log")
            save_checkpoint(root, layout.RESUME, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                  "scheduler": scheduler.state_dict(), "epoch": epoch, "meta": meta})
            metrics.update(val_acc=row["val_acc"], test_acc=test.acc)
            log.info("epoch %d: train loss %.4f acc %.4f | val %.4f | test %.4f | %.1fs", epoch, stats.loss, stats.acc,
                     row["val_acc"], test.acc, stats.wall_s)
            stopped_early = _patience_exhausted(history, cfg.train.early_stopping_patience)
        stopped_early = _agree(stopped_early, world, device)
        report(metrics)
        if stopped_early:
            log.info("early stopping after epoch %d: no validation gain in %d epochs", epoch,
                     cfg.train.early_stopping_patience)
            break
    result = _summarise(history, stopped_early) if lead else SourceResult(0, 0, 0.0, 0.0, stopped_early)
    if lead:
        root.write_bytes(layout.SOURCE_DONE, json.dumps(result.__dict__, indent=2).encode())
    return result


def correctness_rows(outcomes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], epoch: int) -> pd.DataFrame:
    """One row per image presented in the epoch (the correctness table, in sample_id order)."""
    sid, y, hit = (torch.cat(parts).numpy() for parts in zip(*outcomes, strict=True))
    rows = pd.DataFrame({"sample_id": sid.astype(np.int64), "label": y.astype(np.int64), "epoch": epoch,
                         "correct": hit.astype(bool)})
    return rows.sort_values("sample_id", kind="stable").reset_index(drop=True)


def _gather(rows: pd.DataFrame, world: int) -> pd.DataFrame:
    """Every rank's rows, on every rank (data-parallel ranks see disjoint shards of the epoch)."""
    if world <= 1:
        return rows
    parts: list[pd.DataFrame | None] = [None] * world
    torch.distributed.all_gather_object(parts, rows)
    return pd.concat(parts, ignore_index=True).sort_values("sample_id", kind="stable").reset_index(drop=True)


def _patience_exhausted(history: pd.DataFrame, patience: int) -> bool:
    if patience <= 0 or history.val_acc.isna().all():
        return False
    best = int(history.val_acc.to_numpy().argmax())
    return len(history) - 1 - best >= patience


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's decision, broadcast so that all data-parallel ranks stop together."""
    if world <= 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def _summarise(history: pd.DataFrame, stopped_early: bool) -> SourceResult:
    val = history.val_acc.fillna(-1.0).to_numpy()
    best = int(val.argmax())
    return SourceResult(epochs_run=int(history.epoch.max()), best_epoch=int(history.epoch.iloc[best]),
                        best_val_acc=float(history.val_acc.iloc[best]), final_test_acc=float(history.test_acc.iloc[-1]),
                        stopped_early=stopped_early)


def read_source_result(root: StudyRoot) -> SourceResult | None:
    """The summary of a finished source training, or None if it has not finished."""
    if not root.exists(layout.SOURCE_DONE):
        return None
    return SourceResult(**json.loads(root.read_bytes(layout.SOURCE_DONE)))


def load_source_model(cfg: StudyConfig, root: StudyRoot, datasets: Datasets, epoch: int,
                      device: torch.device) -> Classifier:
    """The source model after ``epoch`` epochs, in eval mode (checkpoint checked against the study)."""
    model = build_model(cfg.model.name, datasets.spec)
    state = load_checkpoint(root, layout.checkpoint(epoch), source_meta(cfg, datasets), map_location=device)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def measured_rates(root: StudyRoot, first_epoch: int, stage_s: float, unit: Placement) -> dict[str, Rate]:
    """The rates a run of source training measured from ``first_epoch`` on, in ``stage_s``
    seconds: per image of an epoch (``epoch_s`` of the log), and the rest of the stage."""
    history = read_table(root, layout.TRAIN_LOG, "train_log")
    ran = history[history.epoch >= first_epoch]
    if ran.empty or "epoch_s" not in ran or ran.epoch_s.isna().any():
        return {}
    images = int((read_table(root, layout.SPLIT, "split").split == "train").sum())
    epochs_s = float(ran.epoch_s.sum())
    return {"train.image": rate(epochs_s, len(ran) * images, "image", unit.device, unit.threads),
            "train.start": rate(stage_s - epochs_s, 1, "start", unit.device, unit.threads)}
