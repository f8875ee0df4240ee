"""A whole study from one config: train -> gradients -> score (and select) -> retrain -> report.

    python jobs/study.py --config jobs/configs/mnist.yaml [--root results/mnist]
                         [--stages train gradients score retrain report]

Each stage skips the work whose outputs already exist in the study root, so re-running a
finished study does nothing and an interrupted one resumes. The resolved config is saved
as ``<root>/config.yaml``; the results are ``<root>/accuracy.parquet`` and the tables
of each stage (see README), drawn in ``<root>/report/index.html``. The stages and their
order are :data:`coreset.cluster.stages.STAGES`.
"""
from __future__ import annotations

import argparse
import logging
import time

from coreset.cluster.job import run_stages
from coreset.cluster.stages import STAGES

log = logging.getLogger("coreset")


def _stages(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES), help="stages to run (in order)")


def main() -> None:
    start = time.perf_counter()
    job = run_stages(__doc__, list(STAGES), extend=_stages)
    log.info("study %s finished in %.1fs -> %s", job.config.name, time.perf_counter() - start, job.root.url())


if __name__ == "__main__":
    main()
