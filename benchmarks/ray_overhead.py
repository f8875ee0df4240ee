"""Benchmark: the Ray-sharded gradient stage against the engine called in-process.

    python benchmarks/ray_overhead.py --config jobs/configs/mnist.yaml --root results/mnist

Needs a local study root whose source training has finished (it is only read). Computes the
final-checkpoint table (the configured norms; no early checkpoints, no batch bound) three
ways on the same data into scratch copies of the root: in-process (load data and checkpoint,
compute every shard, write the Parquet files), and ``run_gradients`` with 1 and with 2 Ray
actors. Prints the wall times and ratios (and the time spent computing shards, summed over
workers: the rest is start-up and waiting) and writes them to ray_overhead.parquet. Target:
1 actor at most 10% slower than in-process.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

import harness
import pandas as pd
import ray
import torch

from coreset import layout
from coreset.cli import fail, parse_job_args
from coreset.cluster.gradients import run_gradients
from coreset.cluster.job import one_line_errors
from coreset.cluster.runtime import init_ray
from coreset.config import StudyConfig
from coreset.data import load_datasets
from coreset.stages.gradients import compute_in_process, plan
from coreset.storage import StudyRoot


def scratch_copy(src: Path, parent: str) -> StudyRoot:
    """A new root under ``parent`` holding only the source stage of ``src``."""
    dst = Path(tempfile.mkdtemp(prefix="bench-ray-", dir=parent))
    for rel in (layout.SPLIT, layout.SOURCE_DONE):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dst / rel)
    shutil.copytree(src / layout.SOURCE / "checkpoints", dst / layout.SOURCE / "checkpoints")
    return StudyRoot(str(dst))


def in_process(cfg: StudyConfig, root: StudyRoot) -> float:
    """The stage without Ray (what each actor does for its share); the seconds spent computing shards."""
    return compute_in_process(cfg, root, plan(cfg, root), load_datasets(cfg.data), torch.device("cpu"))


def extend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=harness.positive, default=2,
                   help="CPU threads in-process, and CPUs shared by the Ray actors")
    harness.add_out(p)


def main() -> None:
    job, args = parse_job_args(__doc__.splitlines()[0], extend=extend)
    if not job.root.local:
        fail(f"{job.root.url()} is not a local folder: the benchmark copies its source stage into scratch folders")
    if not job.root.exists(layout.SOURCE_DONE):
        fail(f"no finished source training in {job.root.url()}; run jobs/train.py first")
    cfg = dataclasses.replace(job.config, gradients=dataclasses.replace(
        job.config.gradients, factor_epochs=(), bound_batches=0, cpus_per_worker=args.threads))
    src = Path(job.root.path(""))
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as scratch, one_line_errors():
        root = scratch_copy(src, scratch)
        compute_s, wall = harness.timed(lambda: in_process(cfg, root))
        rows.append({"mode": "in-process", "workers": 0, "wall_s": wall, "compute_s": compute_s})
        n = len(pd.read_parquet(root.url(layout.GRADIENTS), columns=["sample_id"]))

        init_ray(job.address)
        for workers in (1, 2):
            root = scratch_copy(src, scratch)
            wcfg = dataclasses.replace(cfg, gradients=dataclasses.replace(
                cfg.gradients, workers=workers, cpus_per_worker=max(1, args.threads // workers)))
            summary, wall = harness.timed(lambda wcfg=wcfg, root=root: run_gradients(wcfg, root, {"CPU": args.threads}))
            rows.append({"mode": "ray", "workers": workers, "wall_s": wall, "compute_s": summary.compute_s})
        ray.shutdown()

    table = pd.DataFrame(rows)
    table["rows"] = n
    table["rows_per_s"] = n / table.wall_s
    table["ratio_to_in_process"] = table.wall_s / table.wall_s.iloc[0]
    table["norms"] = ",".join(cfg.gradients.norms)
    harness.write_result(table, "ray_overhead", args.out)


if __name__ == "__main__":
    main()
