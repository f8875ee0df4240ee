"""What every benchmark here shares: timing, peak memory, the result table.

Benchmarks are measurements, not study jobs: they write nothing into a study root, only a
table under ``results/bench/``. They run as ``python benchmarks/<name>.py``, so this module
is importable as ``harness`` from the script's own folder and ``coreset`` from the installed
package. Bad input ends a benchmark the way it ends a job: one line through
``coreset.cli.fail`` (exit 2).

One rule for memory, so the figures of different benchmarks can be compared:

* host memory is the peak RSS of the whole process tree of a fresh subprocess
  (:func:`run_probe`);
* CUDA memory is ``torch.cuda.max_memory_allocated`` around a second, warm call
  (:func:`cuda_peak_mib`): the caching allocator's counter is exact and resettable.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

T = TypeVar("T")

RESULTS = Path("results/bench")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# ---------------------------------------------------------------------------- timing

@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls."""

    min_s: float
    median_s: float
    repeats: int


def timed(fn: Callable[[], T], sync: Callable[[], None] | None = None) -> tuple[T, float]:
    """One call of ``fn`` and its wall seconds (``perf_counter``). ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before the clock stops, so queued GPU work is counted."""
    start = time.perf_counter()
    out = fn()
    if sync is not None:
        sync()
    return out, time.perf_counter() - start


def time_pieces(fns: dict[str, Callable[[], object]], repeats: int | dict[str, int],
                warmups: dict[str, Callable[[], object]] | None = None,
                sync: Callable[[], None] | None = None) -> dict[str, Timing]:
    """Time each piece after a warm-up (``warmups[k]``, else one call of ``fns[k]``), its
    ``repeats`` interleaved round-robin with the other pieces.

    Warm-up keeps one-off costs (allocator growth, kernel selection, lazy imports) out of
    the figure; interleaving spreads a shared, noisy machine's slow spells over all pieces,
    so their ratios stay fair. Report ``min_s`` for what a piece costs on a quiet machine,
    ``median_s`` for what a run sees.
    """
    reps = repeats if isinstance(repeats, dict) else dict.fromkeys(fns, repeats)
    for k, fn in fns.items():
        (warmups or {}).get(k, fn)()
    if sync is not None:
        sync()
    seconds: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(reps.values(), default=0)):
        for k, fn in fns.items():
            if r < reps[k]:
                seconds[k].append(timed(fn, sync)[1])
    return {k: Timing(min(s, default=math.nan), statistics.median(s) if s else math.nan, len(s))
            for k, s in seconds.items()}


def cuda_sync(device: str) -> Callable[[], None] | None:
    """The ``sync`` argument of :func:`timed` for ``device``."""
    if device != "cuda":
        return None
    import torch  # only here: probes that never touch CUDA need not pay torch's import

    return torch.cuda.synchronize


# ---------------------------------------------------------------------------- memory

@dataclass(frozen=True)
class Probe:
    """What a probe subprocess replied (:func:`reply`), its tree's peak RSS and its wall time."""

    payload: dict[str, Any]
    peak_mib: float
    wall_s: float


def vmhwm_mib() -> float:
    """This process's peak RSS since ``exec`` (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("/proc/self/status has no VmHWM line (not Linux?)")


def reply(payload: dict[str, Any]) -> None:
    """End a probe: print ``payload`` and this process's own ``VmHWM`` as the last stdout line.

    Only the probe itself can read its exact peak: once it exits, its address space (and its
    ``/proc`` entry's memory lines) is gone before the parent can look.
    """
    print(json.dumps({**payload, "vmhwm_mib": vmhwm_mib()}), flush=True)


def run_probe(argv: Sequence[str], interval_s: float = 0.05) -> Probe:
    """Run ``argv`` (a Python process that ends with :func:`reply`) and measure the peak RSS
    of its whole process tree.

    Why a fresh process: a peak once reached never comes down, and the benchmark's own
    process already holds pandas, earlier models and the allocator's caches; a fresh process
    holds only what the probe builds (subtract a probe that builds only the inputs to get
    the cost of the computation).

    Why the whole tree: work may run in processes the probe starts (data-loader workers,
    joblib/loky workers, Ray workers); their memory is used by the measurement as much as
    the probe's own. Neither ``ru_maxrss`` counts it right: ``RUSAGE_CHILDREN`` is the
    maximum of single descendants, not their sum, is monotone over every child this process
    ever reaped (so the second probe inherits the first one's figure), and on Linux ``exec``
    folds the old address space's peak into the child's ``maxrss``: with ``vfork`` (what
    ``subprocess`` uses) that is the *parent's* peak, so a 13 MiB child of a 500 MiB parent
    reports 513 MiB. ``VmHWM`` belongs to the new address space alone.

    So: the tree (the probe and every live descendant, found by parent pid in ``/proc``) is
    sampled every ``interval_s`` and its RSS summed; the probe's own exact ``VmHWM`` catches
    spikes between samples. The peak is the larger of the two: exact for a lone process,
    and descendants' memory counted to the sampling resolution.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            sampled[0] = max(sampled[0], sum(tree_rss_kib(proc.pid).values()))
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"probe {' '.join(argv)} exited {proc.returncode}:\n{err[-4000:]}")
    payload = json.loads(out.strip().splitlines()[-1])
    own = payload.pop("vmhwm_mib")
    return Probe(payload, max(own, sampled[0] / 1024), wall)


def tree_rss_kib(root: int) -> dict[int, int]:
    """RSS (KiB) of ``root`` and each of its live descendants, by pid (empty once ``root`` is gone)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # exited while we looked
            continue
        pid = int(entry.name)
        parent[pid], rss[pid] = int(fields[1]), int(fields[21]) * _PAGE_KIB  # ppid, rss (pages)
    tree, frontier = set(), {root} & rss.keys()
    while frontier:
        tree |= frontier
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - tree
    return {pid: rss[pid] for pid in tree}


def cuda_peak_mib(fn: Callable[[], object]) -> float:
    """Device memory ``fn`` needs above what is allocated after a first (warm-up) call of it:
    the peak of a second call, from ``torch.cuda.max_memory_allocated``."""
    import torch

    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ---------------------------------------------------------------------------- result table

def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the benchmark's docstring as help and the shared ``--out``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out(p)
    return p


def add_out(p: argparse.ArgumentParser) -> None:
    """The ``--out`` folder every benchmark writes its tables to (also for a job parser)."""
    p.add_argument("--out", type=Path, default=RESULTS,
                   help=f"folder of the result tables, one <name>.parquet each (default {RESULTS})")


def positive(text: str) -> int:
    """``argparse`` type of sizes and counts: a 0 or a negative one is refused as usage."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def write_result(table: pd.DataFrame, name: str, out: Path = RESULTS, title: str | None = None,
                 float_format: Callable[[float], str] | None = None) -> Path:
    """Print ``table`` (under ``title``) and write it to ``<out>/<name>.parquet``.

    The printed table is for the person at the terminal; the Parquet file is what NOTES.md
    figures and later comparisons are read from.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.parquet"
    table.to_parquet(path, index=False)
    if title:
        print(f"\n{title}")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(table.to_string(index=False, float_format=float_format))
    print(f"wrote {path}", flush=True)
    return path
