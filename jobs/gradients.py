"""Per-sample gradient tables of a study: every norm at the trained model and the
last-layer factors at GradSimCore's early checkpoints, sharded over Ray actors.

    python jobs/gradients.py --config jobs/configs/mnist.yaml [--root results/mnist]

Writes ``<root>/gradients/epoch_NNNN/shard_SSSSS.parquet`` (read them all with
``pandas.read_parquet("<root>/gradients")``) and ``<root>/batch_bound.parquet``.
A re-run computes only missing shards.
"""
from __future__ import annotations

from coreset.cluster.job import run_stages

if __name__ == "__main__":
    run_stages(__doc__, ["gradients"])
