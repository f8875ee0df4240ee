"""Train the source model of a study, with a checkpoint, a log row and probe-set gradient
norms every epoch; resumes an interrupted run.

    python jobs/train.py --config jobs/configs/mnist.yaml [--root results/mnist] [--set train.epochs=3]
    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/mnist.yaml --root s3://bucket/mnist
"""
from __future__ import annotations

from coreset.cluster.job import run_stages

if __name__ == "__main__":
    run_stages(__doc__, ["train"])
