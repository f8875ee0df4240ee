"""The pack job on Ray: one task per missing shard, spread over the cluster's nodes.

The driver loads the dataset as every stage does (so ``data.corrupt`` and the canonical
sample ids are exactly the folder's), plans the shards, and ships each split's file list
once to the object store; each task reads its range of files, checks that every image
decodes, and writes its shard and index part (``coreset.data.pack.write_shard``). Tasks
must see the dataset's files: run the pack where they are (a shared volume on a cluster).
"""
from __future__ import annotations

import argparse
import logging
import time

import ray

from coreset.cli import parse_job_args
from coreset.cluster.runtime import init_ray, one_line_errors
from coreset.data.formats import load_splits
from coreset.data.imageset import ImageSet
from coreset.data.pack import PackSettings, ShardWork, finish_pack, pack_source, plan_pack, start_pack, write_shard
from coreset.progress import Progress, duration
from coreset.storage import StudyRoot

log = logging.getLogger("coreset")
__all__ = ["pack_main", "run_pack"]


def _shard_task(out_uri: str, source: ImageSet, work: ShardWork, settings: PackSettings) -> int:
    return write_shard(StudyRoot(out_uri), source, work, settings)


def run_pack(name: str, train: ImageSet, test: ImageSet, out: StudyRoot, settings: PackSettings,
             address: str | None = None, verbose: bool = False) -> dict:
    """Write the missing shards of the pack of (train, test) into ``out``; returns the manifest."""
    start = time.perf_counter()
    sources = {"train": pack_source(train), "test": pack_source(test)}
    plan = plan_pack(name, sources["train"], sources["test"], settings)
    todo = start_pack(out, plan)
    total = sum(len(plan["splits"][s]["shards"]) for s in sources)
    log.info("pack: %d of %d shards to write into %s", len(todo), total, out.url())
    if todo:
        init_ray(address, verbose)
        refs = {split: ray.put(src) for split, src in sources.items()}
        task = ray.remote(max_retries=3)(_shard_task).options(num_cpus=1, scheduling_strategy="SPREAD")
        pending = [task.remote(out.uri, refs[w.split], w, settings) for w in todo]
        progress = Progress("pack: shards", len(pending))
        written = 0
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            written += ray.get(done[0])
            progress.step()
        log.info("pack: wrote %d shards, %.1f MB", len(todo), written / 1e6)
    manifest = finish_pack(out, plan)
    log.info("pack: finished in %s: %d train + %d test images, %d shards, encoding %s",
             duration(time.perf_counter() - start), plan["splits"]["train"]["count"],
             plan["splits"]["test"]["count"], total, plan["encoding"]["kind"])
    return manifest


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must lie in 1..100, got {text}")
    return value


def _short_side(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 keeps the original bytes), got {text}")
    return value


def _pack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the pack's folder: a local path or s3://, gs:// URI")
    p.add_argument("--shard-mb", type=_positive_float, default=PackSettings.shard_mb,
                   help="target shard size in MB (default %(default)s)")
    p.add_argument("--short-side", type=_short_side, default=0,
                   help="re-encode images as JPEG with the shorter side at this many px (default 0: original bytes)")
    p.add_argument("--quality", type=_quality, default=PackSettings.quality,
                   help="JPEG quality of re-encoded images (default %(default)s)")


def pack_main(doc: str) -> None:
    """``jobs/pack.py``: the data of ``--config`` into a pack at ``--out``."""
    job, ns = parse_job_args(doc.splitlines()[0], extend=_pack_args)
    settings = PackSettings(ns.shard_mb, ns.short_side, ns.quality)
    with one_line_errors():
        train, test = load_splits(job.config.data)
        run_pack(job.config.data.name, train, test, StudyRoot(ns.out), settings, job.address, job.verbose)
