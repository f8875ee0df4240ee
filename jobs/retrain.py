"""Retraining trials of a study on Ray Tune and its accuracy table.

    python jobs/retrain.py --config jobs/configs/mnist.yaml [--root results/mnist]

One trial per method x fraction x seed x target model (plus full-data references), each
training from random initialisation on its subset. Writes ``<root>/accuracy.parquet`` (one
row per trial: final and best test accuracy) and prints mean ± std over seeds.
"""
from __future__ import annotations

import logging

from coreset.cli import fail, parse_job_args
from coreset.cluster.retrain import run_retrain
from coreset.cluster.runtime import init_ray
from coreset.report import print_summary

log = logging.getLogger("coreset")


def main() -> None:
    job, _ = parse_job_args(__doc__.splitlines()[0])
    resources = init_ray(job.address)
    try:
        accuracy = run_retrain(job.config, job.root, resources)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    print_summary(accuracy)


if __name__ == "__main__":
    main()
