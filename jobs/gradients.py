"""Per-sample gradient tables of a study: every norm at the trained model and the
last-layer factors at GradSimCore's early checkpoints, sharded over Ray actors.

    python jobs/gradients.py --config jobs/configs/mnist.yaml [--root results/mnist]

Writes ``<root>/gradients/epoch_NNNN/shard_SSSSS.parquet`` (read them all with
``pandas.read_parquet("<root>/gradients")``) and ``<root>/batch_bound.parquet``.
A re-run computes only missing shards.
"""
from __future__ import annotations

import logging

from coreset.cli import fail, parse_job_args
from coreset.cluster.gradients import run_gradients
from coreset.cluster.runtime import init_ray
from coreset.checkpoints import CheckpointError
from coreset.data import DataError

log = logging.getLogger("coreset")


def main() -> None:
    job, _ = parse_job_args(__doc__.splitlines()[0])
    resources = init_ray(job.address)
    try:
        summary = run_gradients(job.config, job.root, resources)
    except (DataError, CheckpointError, ValueError) as e:
        fail(str(e))
    log.info("gradients: %d rows per epoch at epochs %s (final %d); %d shards computed, %d skipped, %.1fs -> %s",
             summary.rows_per_epoch, summary.epochs, summary.final_epoch, summary.shards_computed,
             summary.shards_skipped, summary.wall_s, job.root.url("gradients"))


if __name__ == "__main__":
    main()
