"""Train the source model of a study, with a checkpoint, a log row and probe-set gradient
norms every epoch; resumes an interrupted run.

    python jobs/train.py --config jobs/configs/mnist.yaml [--root results/mnist] [--set train.epochs=3]
    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/mnist.yaml --root s3://bucket/mnist
"""
from __future__ import annotations

import logging

from coreset.cluster.job import run_stage
from coreset.cluster.train import run_train

log = logging.getLogger("coreset")


def main() -> None:
    job, result = run_stage(__doc__, run_train)
    log.info("source model: best epoch %d, validation accuracy %.4f, final test accuracy %.4f -> %s",
             result.best_epoch, result.best_val_acc, result.final_test_acc, job.root.url("source"))


if __name__ == "__main__":
    main()
