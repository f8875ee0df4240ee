"""Scores and subsets of a study: Random, Max-Gradient, Non-extreme Max-Gradient,
Gradient-CDF and GradSimCore, for every fraction and seed of the config.

    python jobs/score.py --config jobs/configs/mnist.yaml [--root results/mnist]

Writes ``<root>/scores/<method>.parquet`` (``sample_id, label, method, score``),
``<root>/subsets/<method>.parquet`` (``method, fraction, seed, sample_id``) and
``<root>/analysis/`` (label entropy of each ranking's top-k; GradSimCore's thresholds).
Read all methods at once with ``pandas.read_parquet("<root>/subsets")``.
"""
from __future__ import annotations

from coreset.cluster.job import run_stages

if __name__ == "__main__":
    run_stages(__doc__, ["score"])
