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
* bytes read: ``rchar`` of the whole tree (every byte through read(2)/pread(2)), minus the
  same job re-run on the finished root, where it only starts, imports, reads its config and
  manifests and skips everything: what is left is what the stage's work read, from the study
  root (synthetic images are generated, not read). This process is a child subreaper
  (``PR_SET_CHILD_SUBREAPER``) and reaps every descendant, so the kernel adds each one's
  counters to this process's own (``/proc/self/io``), also for workers that exit early;
* for the score stage, the bytes it needs: the Parquet column chunks (compressed, as stored)
  of the columns and checkpoints each method declares (``SelectionMethod.inputs()``); and
  its reads replayed in this process (:func:`replayed_score_bytes`): the job's figure also
  holds each Ray worker's imports (about 36 MiB of ``.pyc`` files each), which only the
  small rungs notice.

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
from coreset.cli import fail
from coreset.config import StudyConfig, load_config
from coreset.stages import score
from coreset.storage import StudyRoot

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs/configs/imagenet_shape.yaml"
STAGES = ("train", "gradients", "score", "retrain", "report")
LADDER = ("12800x10", "128000x100", "128000x1000", "1280000x1000")
REFERENCE = "128000x100"
PR_SET_CHILD_SUBREAPER = 36


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
    rchar: int
    driver_peak_mib: float
    others_peak_mib: float


def rchar_self() -> int:
    """Bytes read by this process and every descendant it has reaped (``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise OSError("/proc/self/io has no rchar line (not Linux?)")


def reap_all(timeout_s: float = 120.0) -> None:
    """Wait for every descendant that was re-parented here (Ray's daemons outlive the driver
    by a moment); their read counters reach this process only once they are reaped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.1)
    raise RuntimeError(f"descendants still running {timeout_s:.0f} s after the job ended")


def run_job(argv: list[str], log: Path, interval_s: float = 0.2) -> Run:
    """Run one job to completion, measuring its tree; its console goes to ``log`` (a file, so
    no pipe read here counts as the job's reading)."""
    before = rchar_self()
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
        reap_all()
        done.set()
        sampler.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[1:3])} exited {code}; see {log}:\n{log.read_text()[-3000:]}")
    return Run(wall, rchar_self() - before, peaks["driver"] / 1024, peaks["others"] / 1024)


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


def replayed_score_bytes(cfg: StudyConfig, root: StudyRoot) -> int:
    """Bytes the score stage's reads take, replayed in this process: the same
    :func:`coreset.stages.score.read_inputs` calls its tasks and driver make (one per class
    unit for a by-class method, one for each other method), counted by ``rchar`` without the
    imports and start-up that the job's own figure includes."""
    plan = score.plan(cfg, root)
    before = rchar_self()
    for work in plan.methods:
        inputs = work.method.inputs()
        for shards in score.class_units(plan.table) if inputs.by_class else [None]:
            score.read_inputs(root, inputs, plan.table, shards)
    return rchar_self() - before


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
        run = run_job(argv, logs / f"{r.name}-{stage}.log")
        idle = run_job(argv, logs / f"{r.name}-{stage}.rerun.log")  # finished root: start-up and skip only
        row = {"rung": r.name, "images": r.images, "classes": r.classes, "stage": stage,
               "wall_s": run.wall_s, "us_per_image": run.wall_s / r.images * 1e6,
               "driver_peak_mib": run.driver_peak_mib, "workers_peak_mib": run.others_peak_mib,
               "read_mib": max(run.rchar - idle.rchar, 0) / 2**20, "startup_s": idle.wall_s,
               "needed_mib": float("nan"), "replayed_mib": float("nan")}
        if stage == "score":
            cfg, root = load_config(CONFIG, r.overrides()), StudyRoot(str(root_dir))
            row["needed_mib"] = needed_score_bytes(cfg, root) / 2**20
            row["replayed_mib"] = replayed_score_bytes(cfg, root) / 2**20
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
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        fail("cannot become a child subreaper (prctl): the bytes-read figures need it (Linux only)")
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
