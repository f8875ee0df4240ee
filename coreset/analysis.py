"""The gradient-magnitude paper's analyses of a ranking, as tables (its Figs. 6 and 7).

Both rank by score descending with ties to the lower sample_id, the order every top-k
method uses, and evaluate at sizes given as ``ks`` (counts) or ``fractions`` of N.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from coreset.methods.base import check_scores, top_k
from coreset.methods.budget import global_budget


def _sizes(n: int, ks: Sequence[int] | None, fractions: Sequence[float] | None) -> list[int]:
    if (ks is None) == (fractions is None):
        raise ValueError("give exactly one of ks or fractions")
    sizes = [global_budget(n, f) for f in fractions] if fractions is not None else [int(k) for k in ks]
    bad = [k for k in sizes if not 1 <= k <= n]
    if bad:
        raise ValueError(f"sizes must lie in [1, {n}], got {bad}")
    return sizes


def entropy(labels: np.ndarray, base: float = 2.0) -> float:
    """Shannon entropy of the empirical label distribution."""
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(base))


def label_entropy_curve(
    scores: pd.DataFrame, ks: Sequence[int] | None = None, fractions: Sequence[float] | None = None, base: float = 2.0
) -> pd.DataFrame:
    """Fig. 7: class-label entropy of the top-k against the uniform-labels baseline.

    ``baseline_entropy`` = log(number of classes in ``scores``), the entropy of perfectly
    balanced labels; a top-k well below it is skewed towards few classes. Bits by default.
    """
    check_scores(scores)
    n = len(scores)
    order = top_k(scores, n)
    label_of = scores.set_index("sample_id")["label"].loc[order].to_numpy()
    baseline = float(np.log(scores["label"].nunique()) / np.log(base))
    rows = [(k, k / n, entropy(label_of[:k], base), baseline) for k in _sizes(n, ks, fractions)]
    return pd.DataFrame(rows, columns=["k", "fraction", "entropy", "baseline_entropy"])


def topk_overlap_curve(
    scores_a: pd.DataFrame, scores_b: pd.DataFrame, ks: Sequence[int] | None = None,
    fractions: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Fig. 6: |S_a,k ∩ S_b,k| / k for two models' top-k sets, against the random baseline k/N.

    k/N is the expected overlap of two independent uniform k-subsets. Both tables must
    score the same samples.
    """
    check_scores(scores_a)
    check_scores(scores_b)
    if set(scores_a["sample_id"]) != set(scores_b["sample_id"]):
        raise ValueError("the two score tables must cover the same sample_ids")
    n = len(scores_a)
    order_a, order_b = top_k(scores_a, n), top_k(scores_b, n)
    rows = []
    for k in _sizes(n, ks, fractions):
        overlap = len(np.intersect1d(order_a[:k], order_b[:k], assume_unique=True))
        rows.append((k, k / n, overlap / k, k / n))
    return pd.DataFrame(rows, columns=["k", "fraction", "overlap", "random_baseline"])


def source_spread(accuracy: pd.DataFrame) -> pd.DataFrame:
    """How much of a result's spread is the source model's: per target model, method and
    fraction, over rows of several studies that differ only in ``source_seed`` (their source
    models), the mean test accuracy; ``retrain_std``, the std over retraining seeds within a
    source model (averaged over source models); ``source_std``, the std over source models of
    their mean. A ``source_std`` well above ``retrain_std`` means the ranking of methods at that
    fraction is a property of one source model, not of the method."""
    need = {"source_seed", "target_model", "method", "fraction", "seed", "test_acc"}
    missing = sorted(need - set(accuracy.columns))
    if missing:
        raise ValueError(f"accuracy rows lack {missing}")
    keys = ["target_model", "method", "fraction"]
    per_source = accuracy.groupby([*keys, "source_seed"])["test_acc"].agg(["mean", "std", "count"]).reset_index()
    out = per_source.groupby(keys).agg(mean=("mean", "mean"), retrain_std=("std", "mean"),
                                       source_std=("mean", "std"), source_seeds=("source_seed", "nunique"),
                                       retrain_seeds=("count", "min"))
    return out.reset_index()
