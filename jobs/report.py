"""The study report: the papers' figures and tables from whatever a study root holds.

    python jobs/report.py --config jobs/configs/mnist.yaml [--root results/mnist] [--compare URI] [--replicas URI ...]

Writes ``<root>/report/index.html`` (a static page: a heading per stage, each figure with the
paper figure it reproduces), ``<root>/report/<figure>.png`` and the numbers behind each
(``<figure>.csv``). A partial study gives a partial report; re-running redraws only figures
whose input tables changed. ``--compare`` names a second study of the same dataset (another
source model) for the top-k overlap of the two gradient rankings; ``--replicas`` names roots of
this study run with other ``train.seed`` values (other source models, the same split and seeds)
for the spread over source models beside the spread over retraining seeds. Needs no Ray.
"""
from __future__ import annotations

import argparse
import logging
import time

from coreset.cli import parse_job_args
from coreset.cluster.job import driver_lease, one_line_errors, print_plan
from coreset.cluster.stages import STAGES
from coreset.data import load_datasets
from coreset.stages.report import write_report
from coreset.storage import StudyRoot

log = logging.getLogger("coreset")


def _compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compare", help="another study root (same dataset and split) for the top-k overlap figure")
    p.add_argument("--replicas", nargs="+", default=[], metavar="ROOT",
                   help="roots of this study run with other train.seed values, for the spread over source models")


def main() -> None:
    job, ns = parse_job_args(__doc__.splitlines()[0], extend=_compare)
    if job.plan:
        with one_line_errors():
            start = time.perf_counter()
            datasets = load_datasets(job.config.data)
            print_plan(job, ["report"], datasets, time.perf_counter() - start)
        return
    with one_line_errors(), driver_lease(job):  # --compare's root is only read: no lease there
        compare = StudyRoot(ns.compare) if ns.compare else None
        replicas = tuple(StudyRoot(r) for r in ns.replicas)
        result = write_report(job.config, job.root, compare, replicas=replicas)
        log.info("report: %s", STAGES["report"].summary(result, job.root))


if __name__ == "__main__":
    main()
