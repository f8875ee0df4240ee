"""Training primitives shared by source training and retraining: optimiser, schedule,
one epoch, evaluation. Pure PyTorch; Ray wraps these, never the other way round.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coreset.config import TrainConfig
from coreset.devices import autocast
from coreset.progress import Progress


@dataclass
class EpochStats:
    loss: float
    acc: float
    n: int
    wall_s: float


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images in channels-last layout: about 2x faster convolutions on CPU (and tensor cores on GPU).
    A batch already on ``device`` (retraining's resident data) is only re-laid out there."""
    if x.dim() == 4:
        return x.to(device, memory_format=torch.channels_last, non_blocking=True)
    return x.to(device, non_blocking=True)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` in channels-last layout (matching :func:`to_device`)."""
    return model.to(device, memory_format=torch.channels_last)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning-rate factor: linear warmup, then cosine to 0, step decay or constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch
    milestones = sorted(m * steps_per_epoch for m in cfg.milestones)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if cfg.schedule == "step":
            return cfg.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    device: torch.device, amp: bool = True, progress: Progress | None = None,
                    outcomes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None) -> EpochStats:
    """One pass over ``batches`` with a scheduler step per batch. ``outcomes``, when given,
    receives (sample ids, labels, correct) of every batch: what the forward pass already knows."""
    model.train()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    for x, y, sid in batches:
        x, y = to_device(x, device), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        hits = logits.detach().argmax(1) == y
        correct += hits.sum()
        if outcomes is not None:
            outcomes.append((sid, y.cpu(), hits.cpu()))
        n += len(y)
        if progress is not None:
            progress.step(loss=loss.detach())
    return EpochStats(float(loss_sum) / max(n, 1), float(correct) / max(n, 1), n, time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
             device: torch.device, amp: bool = True) -> EpochStats:
    """Mean loss and top-1 accuracy in eval mode."""
    model.eval()
    start = time.perf_counter()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y, _ in batches:
        x, y = to_device(x, device), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    return EpochStats(loss_sum / max(n, 1), correct / max(n, 1), n, time.perf_counter() - start)
