"""Per-sample gradient tables of a study: every norm at the trained model and the
last-layer factors at GradSimCore's early checkpoints, sharded over Ray actors.

    python jobs/gradients.py --config jobs/configs/mnist.yaml [--root results/mnist]

Writes ``<root>/gradients/epoch_NNNN/shard_SSSSS.parquet`` (read them all with
``pandas.read_parquet("<root>/gradients")``) and ``<root>/batch_bound.parquet``.
A re-run computes only missing shards.
"""
from __future__ import annotations

import logging

from coreset.cluster.gradients import run_gradients
from coreset.cluster.job import run_stage

log = logging.getLogger("coreset")


def main() -> None:
    job, summary = run_stage(__doc__, run_gradients)
    log.info("gradients: %d rows per epoch at epochs %s (final %d); %d shards computed, %d skipped, %.1fs -> %s",
             summary.rows_per_epoch, summary.epochs, summary.final_epoch, summary.shards_computed,
             summary.shards_skipped, summary.wall_s, job.root.url("gradients"))


if __name__ == "__main__":
    main()
