"""Retraining steps per second: batches through the loader against batches from the data held
on the device (``coreset.data.resident``), on the CPU and, where CUDA is present, on the GPU.

Both paths train the same model on the same CIFAR-10-shaped subset (3x32x32 uint8 images
under the name cifar10: its statistics and crop+flip augmentation; synthetic pixels, since
only the speed is measured) with the trial's own code (``stages.retrain.trial_batches``,
``training.train_one_epoch``). The loader path slices, augments and normalises each batch on
the CPU and copies it over; the resident path gathers it from device memory and augments it
there. On the CPU the two are the same code (decoded images are already resident there):
their ratio is the check that the resident path costs nothing on a CPU. A timed piece is
``--steps`` optimiser steps (pieces interleaved, after a warm-up: ``harness.time_pieces``);
on CUDA bf16 autocast is on (``train.amp``), as in a study.

    python benchmarks/retrain.py [--models cnn5 resnet18_cifar] [--images 5000] [--steps 100]

Writes retrain.parquet (``device, model, path, images, batch, steps, min_s, median_s,
steps_per_s, vs_loader``; the rate from min_s).
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import harness
import numpy as np
import pandas as pd
import torch

from coreset.cli import fail
from coreset.config import DataConfig, StudyConfig, TrainConfig, load_config
from coreset.data import Datasets
from coreset.data.synthetic import synthetic_splits
from coreset.models import MODELS, build_model
from coreset.stages.retrain import cycle_batches, trial_batches
from coreset.training import build_optimizer, build_scheduler, prepare_model, train_one_epoch

PATHS = {"loader": 0.0, "resident": 16.0}  # retrain.resident_max_gb of each path


def study(batch: int, resident_max_gb: float) -> StudyConfig:
    """The study settings a trial reads: its batch size and whether the data may be resident."""
    cfg = load_config(None, [f"retrain.batch_size={batch}", f"retrain.resident_max_gb={resident_max_gb}",
                             "retrain.gpus_per_trial=1"])
    return dataclasses.replace(cfg, train=TrainConfig(lr=0.05, amp=True))


def piece(datasets: Datasets, model_name: str, cfg: StudyConfig, device: torch.device,
          ids: np.ndarray, steps: int) -> Callable[[], object]:
    """``steps`` optimiser steps of one trial's model on ``ids`` through ``cfg``'s path (the
    model, its optimiser and the endless batch stream are made once, as in a trial)."""
    model = prepare_model(build_model(model_name, datasets.spec), device)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps)
    train, _, _ = trial_batches(cfg, datasets, ids, 0, device, None)
    stream = cycle_batches(train)
    return lambda: train_one_epoch(model, itertools.islice(stream, steps), optimizer, scheduler, device, cfg.train.amp)


def measure(datasets: Datasets, model_name: str, device: torch.device, ids: np.ndarray, batch: int, steps: int,
            repeats: int) -> list[dict[str, object]]:
    """The rows of one model on one device: each path's time for ``steps`` steps."""
    fns = {path: piece(datasets, model_name, study(batch, gb), device, ids, steps) for path, gb in PATHS.items()}
    timings = harness.time_pieces(fns, repeats, sync=harness.cuda_sync(device.type))
    base = timings["loader"].min_s
    return [{"device": device.type, "model": model_name, "path": path, "images": len(ids), "batch": batch,
             "steps": steps, "min_s": t.min_s, "median_s": t.median_s, "steps_per_s": steps / t.min_s,
             "vs_loader": base / t.min_s} for path, t in timings.items()]


def main() -> None:
    p = harness.parser(__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["cnn5", "resnet18_cifar"])
    p.add_argument("--images", type=harness.positive, default=5000, help="subset size (CIFAR-10 at 10%%: 5000)")
    p.add_argument("--batch", type=harness.positive, default=128)
    p.add_argument("--steps", type=harness.positive, default=100, help="optimiser steps a timed piece")
    p.add_argument("--repeats", type=harness.positive, default=3)
    p.add_argument("--threads", type=harness.positive, default=1, help="CPU threads (a trial's cpus_per_trial)")
    args = p.parse_args()
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        fail(f"unknown model {', '.join(unknown)}; allowed: {', '.join(MODELS.names())}")
    torch.set_num_threads(args.threads)
    datasets = Datasets(DataConfig(name="cifar10", root="unused"),
                        *synthetic_splits(args.images, 10, 32, channels=3), 32)
    ids = np.arange(args.images)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = [row for device in devices for model in args.models
            for row in measure(datasets, model, device, ids, args.batch, args.steps, args.repeats)]
    harness.write_result(pd.DataFrame(rows), "retrain", args.out,
                         title=f"retraining steps/s, loader vs resident data ({args.threads} CPU thread(s))")


if __name__ == "__main__":
    main()
