"""The pack job on Ray: one task per missing shard, spread over the cluster's nodes.

The driver loads the dataset as every stage does (so ``data.corrupt`` and the canonical
sample ids are exactly the folder's), plans the shards, and ships each split's file list
once to the object store; each task reads its range of files, checks that every image
decodes, and writes its shard and index part (``coreset.data.pack.write_shard``). Tasks
must see the dataset's files: run the pack where they are (a shared volume on a cluster).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

import ray

from coreset.cli import configure_logging, parse_job_args, resolve_path
from coreset.cluster.runtime import init_ray, one_line_errors
from coreset.data import load_datasets
from coreset.data.formats import load_splits
from coreset.data.imageset import ImageSet
from coreset.data.pack import PackSettings, ShardWork, finish_pack, planned, start_pack, write_shard
from coreset.errors import ConfigError
from coreset.progress import Progress, duration
from coreset.stages.export import SUBSET_CSV, check_subset, study_config, subset_pack, write_subset_csv
from coreset.stages.train import check_study_data
from coreset.storage import StudyRoot

log = logging.getLogger("coreset")
__all__ = ["export_main", "export_subset", "pack_main", "run_pack"]


def _shard_task(out_uri: str, source: ImageSet, work: ShardWork, settings: PackSettings) -> int:
    return write_shard(StudyRoot(out_uri), source, work, settings)


def run_pack(plan: dict, sources: dict[str, ImageSet], out: StudyRoot, settings: PackSettings,
             address: str | None = None, verbose: bool = False) -> dict:
    """Write the missing shards of ``plan`` (of the splits' ``sources``) into ``out``; returns the manifest."""
    start = time.perf_counter()
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
    p.add_argument("--subset", nargs=3, metavar=("METHOD", "FRACTION", "SEED"),
                   help="instead of --config: pack the recorded subset of the study at --root (its original images)")


def pack_main(doc: str) -> None:
    """``jobs/pack.py``: the data of ``--config`` into a pack at ``--out``, or (``--root``,
    ``--subset``) a study's coreset."""
    if _exporting(sys.argv[1:]):
        export_main(doc)
        return
    job, ns = parse_job_args(doc.splitlines()[0], extend=_pack_args)
    settings = PackSettings(ns.shard_mb, ns.short_side, ns.quality)
    with one_line_errors():
        plan, sources = planned(job.config.data.name, *load_splits(job.config.data), settings)
        run_pack(plan, sources, StudyRoot(ns.out), settings, job.address, job.verbose)


def _exporting(argv: list[str]) -> bool:
    """Whether the command line asks for a study's coreset (``--root`` or ``--subset``)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--root")
    p.add_argument("--subset", nargs="*")
    ns, _ = p.parse_known_args(argv)
    return ns.root is not None or ns.subset is not None


def _export_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--root", help="the study root whose coreset to pack (a local path or s3://, gs:// URI)")
    p.add_argument("--subset", nargs=3, metavar=("METHOD", "FRACTION", "SEED"),
                   help="the recorded subset: a scored method, one of its fractions and seeds")
    p.add_argument("--config", help=argparse.SUPPRESS)  # refused with --root: the study's own config says it all
    p.add_argument("--out", required=True, help="the pack's folder: a local path or s3://, gs:// URI")
    p.add_argument("--shard-mb", type=_positive_float, default=PackSettings.shard_mb,
                   help="target shard size in MB (default %(default)s)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--verbose", action="store_true", help="also show what Ray's workers print")
    return p


def _export_request(ns: argparse.Namespace) -> tuple[StudyRoot, str, float, int]:
    """The study root and the subset (method, fraction, seed) asked for, or one line why not."""
    if ns.config is not None:
        raise ConfigError("--root names a study, whose recorded config says what data it reads: drop --config "
                          "(or drop --root and --subset to pack the dataset of --config)")
    if ns.root is None:
        raise ConfigError("--subset needs --root STUDY: a coreset is packed from a study's recorded subset")
    if ns.subset is None:
        raise ConfigError("--root needs --subset METHOD FRACTION SEED: the recorded subset to pack")
    method, fraction, seed = ns.subset
    try:
        return StudyRoot(resolve_path("--root", ns.root)), method, float(fraction), int(seed)
    except ValueError:
        raise ConfigError(f"--subset {' '.join(ns.subset)}: FRACTION must be a number and SEED an integer") from None


def export_main(doc: str) -> None:
    """``jobs/pack.py --root STUDY --subset METHOD FRACTION SEED --out URI``: the study's
    recorded subset as a pack (:mod:`coreset.stages.export`), original bytes."""
    ns = _export_args(doc.splitlines()[0]).parse_args()
    configure_logging()
    with one_line_errors():
        root, method, fraction, seed = _export_request(ns)
        out = StudyRoot(resolve_path("--out", ns.out))
        export_subset(root, method, fraction, seed, out, PackSettings(ns.shard_mb), ns.address, ns.verbose)


def export_subset(root: StudyRoot, method: str, fraction: float, seed: int, out: StudyRoot, settings: PackSettings,
                  address: str | None = None, verbose: bool = False) -> dict:
    """Pack the study's recorded subset into ``out`` (its missing shards, then the manifest and
    ``subset.csv``), reading the data the study records; returns the manifest."""
    cfg = study_config(root)
    trial, method_settings = check_subset(cfg, root, method, fraction, seed)
    datasets = load_datasets(dataclasses.replace(cfg.data, max_decoded_gb=0.0))  # a pack stays packed: its bytes
    check_study_data(cfg, root, datasets)
    plan, sources, ids = subset_pack(cfg, root, datasets, trial, method_settings, settings)
    manifest = run_pack(plan, sources, out, settings, address, verbose)
    write_subset_csv(out, manifest, ids)
    log.info("pack: %s of %s at fraction %g seed %d: %d images, %s", method, root.url(), fraction, seed, len(ids),
             out.url(SUBSET_CSV))
    return manifest
