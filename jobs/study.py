"""A whole study from one config: train -> gradients -> score (and select) -> retrain.

    python jobs/study.py --config jobs/configs/mnist.yaml [--root results/mnist] [--stages train gradients score retrain]

Each stage skips the work whose outputs already exist in the study root, so re-running a
finished study does nothing and an interrupted one resumes. The resolved config is saved
as ``<root>/config.yaml``; the results are ``<root>/accuracy.parquet`` and the tables
of each stage (see README).
"""
from __future__ import annotations

import argparse
import logging
import time

from coreset.cluster.gradients import run_gradients
from coreset.cluster.job import one_line_errors, start_job
from coreset.cluster.retrain import run_retrain
from coreset.cluster.score import run_score
from coreset.cluster.train import run_train
from coreset.report import print_summary

log = logging.getLogger("coreset")
STAGES = ("train", "gradients", "score", "retrain")


def _stages(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run (in order)")


def main() -> None:
    job, ns, resources = start_job(__doc__, extend=_stages)
    cfg, root = job.config, job.root
    start = time.perf_counter()
    with one_line_errors():
        for stage in (s for s in STAGES if s in ns.stages):
            t = time.perf_counter()
            if stage == "train":
                run_train(cfg, root, resources)
            elif stage == "gradients":
                run_gradients(cfg, root, resources)
            elif stage == "score":
                run_score(cfg, root, resources)
            else:
                print_summary(run_retrain(cfg, root, resources))
            log.info("stage %s: %.1fs", stage, time.perf_counter() - t)
    log.info("study %s finished in %.1fs -> %s", cfg.name, time.perf_counter() - start, root.url())


if __name__ == "__main__":
    main()
