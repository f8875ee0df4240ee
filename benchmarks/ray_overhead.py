"""Benchmark: the Ray-sharded gradient stage against the engine called in-process.

    python jobs/bench_ray_overhead.py --config jobs/configs/mnist.yaml --root results/mnist

Needs a study whose source training has finished. Computes the final-checkpoint table
(the configured norms; no early checkpoints, no batch bound) three ways on the same data
into scratch roots: in-process (load data and checkpoint, compute every shard, write the
Parquet files), and ``run_gradients`` with 1 and with 2 Ray actors. Prints the wall times
and ratios (and the time spent computing shards, summed over workers: the rest is start-up
and waiting) and writes them to ``results/bench/ray_overhead.parquet``. Target: 1 actor at
most 10% slower than in-process.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import torch

from coreset import layout
from coreset.cluster.gradients import run_gradients
from coreset.config import load_config
from coreset.data import load_datasets
from coreset.stages.gradients import compute_shard, final_epoch, plan
from coreset.stages.train import load_source_model, read_source_result, recorded_train_ids
from coreset.storage import StudyRoot
from coreset.tables import write_table


def scratch_copy(src: Path) -> StudyRoot:
    """A new root holding only the source stage of ``src``."""
    dst = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    for rel in (layout.SPLIT, layout.SOURCE_DONE):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dst / rel)
    shutil.copytree(src / layout.SOURCE / "checkpoints", dst / layout.SOURCE / "checkpoints")
    return StudyRoot(str(dst))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/bench/ray_overhead.parquet")
    args = p.parse_args()
    cfg = load_config(args.config)
    cfg = dataclasses.replace(cfg, gradients=dataclasses.replace(cfg.gradients, factor_epochs=(), bound_batches=0,
                                                                 cpus_per_worker=args.threads))
    src = Path(args.root)
    torch.set_num_threads(args.threads)
    rows = []

    root = scratch_copy(src)
    start = time.perf_counter()
    ds = load_datasets(cfg.data)
    source = read_source_result(root)
    assert source is not None, f"{src} has no finished source training"
    epoch = final_epoch(cfg.gradients, source)
    tasks = plan(recorded_train_ids(root), epoch, (), cfg.gradients.shard_size, source.epochs_run)
    model = load_source_model(cfg, root, ds, epoch, torch.device("cpu"))
    compute_s = 0.0
    for t in tasks:
        shard_start = time.perf_counter()
        write_table(root, t.path, compute_shard(model, ds, t, cfg.gradients, torch.device("cpu")), "gradients")
        compute_s += time.perf_counter() - shard_start
    rows.append({"mode": "in-process", "workers": 0, "wall_s": time.perf_counter() - start, "compute_s": compute_s})
    n = len(pd.read_parquet(root.url(layout.GRADIENTS), columns=["sample_id"]))

    ray.init(num_cpus=max(2, 2 * args.threads), include_dashboard=False, logging_level="WARNING")
    for workers in (1, 2):
        root = scratch_copy(src)
        wcfg = dataclasses.replace(cfg, gradients=dataclasses.replace(cfg.gradients, workers=workers,
                                                                      cpus_per_worker=max(1, args.threads // workers)))
        start = time.perf_counter()
        summary = run_gradients(wcfg, root, {"CPU": args.threads})
        rows.append({"mode": "ray", "workers": workers, "wall_s": time.perf_counter() - start,
                     "compute_s": summary.compute_s})
    ray.shutdown()

    table = pd.DataFrame(rows)
    table["rows"] = n
    table["rows_per_s"] = n / table.wall_s
    table["ratio_to_in_process"] = table.wall_s / table.wall_s.iloc[0]
    table["norms"] = ",".join(cfg.gradients.norms)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
