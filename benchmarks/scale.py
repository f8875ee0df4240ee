"""Benchmark: the ImageNet-shaped study over a ladder of (images, classes), stage by stage.

    python benchmarks/scale.py                                  # the ladder below, ~1 h on 2 cores
    python benchmarks/scale.py --rungs 12800x10 128000x100      # a shorter ladder

Every rung is a fresh study root under ``--work`` of ``jobs/configs/imagenet_shape.yaml``
(synthetic 8 px images, mlp512, GradSimCore over 2 checkpoints) with ``data.synthetic_size``
and ``data.synthetic_classes`` set to the rung. Each stage runs as its own job
(``python jobs/<stage>.py``), exactly as a user runs it, in a fresh process tree with its own
embedded Ray, one after the other on an otherwise idle machine. Per stage it measures:

* wall time, and time per image (µs per training image of the rung);
* peak memory: the driver's RSS, and the summed RSS of every other process of the tree (Ray's
  workers and daemons; pages of Ray's shared-memory object store count in each process that
  touches them, so this is an upper bound);
* bytes read from the study root: every file of the root is dropped from the page cache
  (``POSIX_FADV_DONTNEED``) before the job, and what of those files is cached after it
  (``mincore``) is what the job read from disk, readahead included; files the job replaced
  are not counted. (An earlier version summed ``rchar`` over the process tree; Ray's raylet
  reaps its workers without handing their counters on, so their reads went uncounted, and
  socket reads were counted.) Synthetic images are generated, not read;
* startup: the same job re-run on the finished root, where it only starts, imports, reads its
  config and manifests and skips everything;
* for the score stage, the bytes it needs: the Parquet column chunks (compressed, as stored)
  of the columns and checkpoints each method declares (``SelectionMethod.inputs()``), summed
  over methods; and its reads replayed in this process, one method at a time on an evicted
  root (:func:`replayed_score_bytes`).

The second table sets the rungs against the reference rung (128k, 100). Targets (issue 11):
every stage's time per image at (1.28M, 1000) within 1.5x of (128k, 100); the score stage
reading at most 1.2x the bytes it needs; the score job at most 1.5x as long at (128k, 1000)
as at (128k, 100); the (1.28M, 1000) rung completing on 2 cores and 24 GB.

Writes scale.parquet and scale_ratios.parquet; each stage's console goes to
``<work>/logs/<rung>-<stage>.log``.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import harness
import pandas as pd
import pyarrow.parquet as pq

from coreset import layout
from coreset.config import StudyConfig, load_config
from coreset.stages import score
from coreset.storage import StudyRoot

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs/configs/imagenet_shape.yaml"
STAGES = ("train", "gradients", "score", "retrain", "report")
LADDER = ("12800x10", "128000x100", "128000x1000", "1280000x1000")
REFERENCE = "128000x100"


@dataclass(frozen=True)
class Rung:
    images: int
    classes: int

    @property
    def name(self) -> str:
        return f"{self.images}x{self.classes}"

    def overrides(self) -> list[str]:
        return [f"data.synthetic_size={self.images}", f"data.synthetic_classes={self.classes}"]


def rung(text: str) -> Rung:
    """``argparse`` type of a rung, ``IMAGESxCLASSES``."""
    try:
        images, classes = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a rung is IMAGESxCLASSES, e.g. 128000x100; got {text!r}") from None
    if classes < 2 or images < classes:
        raise argparse.ArgumentTypeError(f"need at least 2 classes and one image per class; got {text!r}")
    return Rung(images, classes)


@dataclass(frozen=True)
class Run:
    wall_s: float
    driver_peak_mib: float
    others_peak_mib: float


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache (``mincore``), which asks nothing of the disk."""
    size = path.stat().st_size
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _LIBC.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return sum(v & 1 for v in vec) * PAGE
        finally:
            _LIBC.munmap(addr, size)
    finally:
        os.close(fd)


def evict_root(root: Path) -> dict[Path, int]:
    """Drop every file of the study root from the page cache (``POSIX_FADV_DONTNEED`` after
    an fsync); returns each file's inode, so that files a job replaces are not counted."""
    files = {}
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            files[path] = path.stat().st_ino
    return files


def read_from_root(files: dict[Path, int]) -> int:
    """Bytes of the root's earlier files that a job read from disk: what of them is cached
    after it (evicted before it; a page read in by readahead counts, as the disk served it)."""
    return sum(resident_bytes(p) for p, ino in files.items() if p.exists() and p.stat().st_ino == ino)


def run_job(argv: list[str], log: Path, interval_s: float = 0.2) -> Run:
    """Run one job to completion, sampling its process tree's memory; its console goes to ``log``."""
    peaks = {"driver": 0, "others": 0}
    done = threading.Event()
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

        def sample() -> None:
            while not done.is_set():
                rss = harness.tree_rss_kib(os.getpid())
                driver = rss.pop(proc.pid, 0)
                rss.pop(os.getpid(), None)
                peaks["driver"] = max(peaks["driver"], driver)
                peaks["others"] = max(peaks["others"], sum(rss.values()))
                done.wait(interval_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[1:3])} exited {code}; see {log}:\n{log.read_text()[-3000:]}")
    return Run(wall, peaks["driver"] / 1024, peaks["others"] / 1024)


def needed_score_bytes(cfg: StudyConfig, root: StudyRoot) -> int:
    """Compressed bytes of the column chunks each configured method declares it needs
    (``inputs()``: columns and checkpoints), summed over methods: each scores on its own."""
    plan = score.plan(cfg, root)
    total = 0
    for work in plan.methods:
        inputs = work.method.inputs()
        columns = set(score.KEYS) | set(inputs.columns)
        for epoch in inputs.epochs:
            for shard in range(plan.table["shards_per_epoch"]):
                path = root.path(layout.gradient_shard(epoch, shard))
                meta = pq.ParquetFile(path, filesystem=root.fs).metadata
                for g in range(meta.num_row_groups):
                    group = meta.row_group(g)
                    total += sum(group.column(c).total_compressed_size for c in range(group.num_columns)
                                 if group.column(c).path_in_schema.split(".")[0] in columns)
    return total


def replayed_score_bytes(cfg: StudyConfig, root: StudyRoot, root_dir: Path) -> int:
    """Bytes the score stage's reads take from disk, replayed in this process: the same
    :func:`coreset.stages.score.read_inputs` calls its tasks and driver make (one per class
    unit for a by-class method, one for each other method), one method at a time on an
    evicted root, as each method's tasks read the table afresh."""
    plan = score.plan(cfg, root)
    total = 0
    for work in plan.methods:
        files = evict_root(root_dir)
        inputs = work.method.inputs()
        for shards in score.class_units(plan.table) if inputs.by_class else [None]:
            score.read_inputs(root, inputs, plan.table, shards)
        total += read_from_root(files)
    return total


def measure_rung(r: Rung, work: Path) -> list[dict]:
    root_dir = work / r.name
    if root_dir.exists():
        shutil.rmtree(root_dir)
    root_dir.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    rows = []
    for stage in STAGES:
        argv = [sys.executable, str(REPO / "jobs" / f"{stage}.py"), "--config", str(CONFIG),
                "--root", str(root_dir), "--set", *r.overrides()]
        print(f"{r.name}: {stage} ...", flush=True)
        files = evict_root(root_dir)
        run = run_job(argv, logs / f"{r.name}-{stage}.log")
        read = read_from_root(files)
        idle = run_job(argv, logs / f"{r.name}-{stage}.rerun.log")  # finished root: start-up and skip only
        row = {"rung": r.name, "images": r.images, "classes": r.classes, "stage": stage,
               "wall_s": run.wall_s, "us_per_image": run.wall_s / r.images * 1e6,
               "driver_peak_mib": run.driver_peak_mib, "workers_peak_mib": run.others_peak_mib,
               "read_mib": read / 2**20, "startup_s": idle.wall_s,
               "needed_mib": float("nan"), "replayed_mib": float("nan")}
        if stage == "score":
            cfg, root = load_config(CONFIG, r.overrides()), StudyRoot(str(root_dir))
            row["needed_mib"] = needed_score_bytes(cfg, root) / 2**20
            row["replayed_mib"] = replayed_score_bytes(cfg, root, root_dir) / 2**20
        rows.append(row)
        print(f"{r.name}: {stage} {run.wall_s:.1f} s, read {row['read_mib']:.0f} MiB", flush=True)
    return rows


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Each rung's time per image, score bytes and score time against the reference rung."""
    ref = table[table.rung == REFERENCE].set_index("stage")
    out = []
    for (name, images, classes), g in table.groupby(["rung", "images", "classes"], sort=False):
        g = g.set_index("stage")
        row = {"rung": name, "images": images, "classes": classes}
        for stage in STAGES:
            row[f"{stage}_per_image_vs_ref"] = (g.us_per_image[stage] / ref.us_per_image[stage]
                                                if len(ref) else float("nan"))
        row["score_read_vs_needed"] = g.read_mib["score"] / g.needed_mib["score"]
        row["score_replayed_vs_needed"] = g.replayed_mib["score"] / g.needed_mib["score"]
        row["score_time_vs_ref"] = g.wall_s["score"] / ref.wall_s["score"] if len(ref) else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--rungs", type=rung, nargs="+", default=[rung(x) for x in LADDER], metavar="IMAGESxCLASSES")
    p.add_argument("--work", type=Path, default=Path("results/scale"),
                   help="folder of the rungs' study roots (each is replaced; default results/scale)")
    p.add_argument("--keep", action="store_true", help="keep each rung's root (default: delete it once measured)")
    ns = p.parse_args()
    ns.work = ns.work.resolve()
    rows = []
    for r in ns.rungs:  # the tables are rewritten after every rung: a long ladder keeps what it measured
        rows += measure_rung(r, ns.work)
        if not ns.keep:
            shutil.rmtree(ns.work / r.name)
        table = pd.DataFrame(rows)
        harness.write_result(table, "scale", ns.out, title="the ImageNet-shaped study, stage by stage")
        harness.write_result(ratios(table), "scale_ratios", ns.out, title=f"against the reference rung {REFERENCE}")


if __name__ == "__main__":
    main()
