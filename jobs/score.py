"""Scores and subsets of a study: Random, Max-Gradient, Non-extreme Max-Gradient,
Gradient-CDF and GradSimCore, for every fraction and seed of the config.

    python jobs/score.py --config jobs/configs/mnist.yaml [--root results/mnist]

Writes ``<root>/scores/<method>.parquet`` (``sample_id, label, method, score``),
``<root>/subsets/<method>.parquet`` (``method, fraction, seed, sample_id``) and
``<root>/analysis/`` (label entropy of each ranking's top-k; GradSimCore's thresholds).
Read all methods at once with ``pandas.read_parquet("<root>/subsets")``.
"""
from __future__ import annotations

import logging

from coreset.cluster.job import run_stage
from coreset.cluster.score import run_score

log = logging.getLogger("coreset")


def main() -> None:
    _, summary = run_stage(__doc__, run_score)
    log.info("score: computed %s, skipped %s in %.1fs", summary.computed or "nothing", summary.skipped or "nothing",
             summary.wall_s)
    for method, sizes in summary.subset_sizes.items():
        log.info("subset sizes %-24s %s", method, sizes)


if __name__ == "__main__":
    main()
