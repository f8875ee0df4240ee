"""Retraining trials of a study on Ray Tune and its accuracy table.

    python jobs/retrain.py --config jobs/configs/mnist.yaml [--root results/mnist]

One trial per method x fraction x seed x target model (plus full-data references), each
training from random initialisation on its subset. Writes ``<root>/accuracy.parquet`` (one
row per trial: final and best test accuracy) and prints mean ± std over seeds.
"""
from __future__ import annotations

from coreset.cluster.job import run_stages

if __name__ == "__main__":
    run_stages(__doc__, ["retrain"])
