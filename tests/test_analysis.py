"""Fig. 6/7 analysis tables on rankings whose answers are known by construction."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coreset.analysis import entropy, label_entropy_curve, topk_overlap_curve


def scores(score: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": np.arange(len(score)), "label": labels, "score": score})


def test_entropy_of_label_distribution() -> None:
    assert entropy(np.array([3, 3, 3])) == 0.0
    assert entropy(np.array([0, 1, 2, 3])) == pytest.approx(2.0)
    assert entropy(np.array([0, 1]), base=np.e) == pytest.approx(np.log(2))


def test_label_entropy_curve_skewed_top() -> None:
    labels = np.repeat([0, 1, 2, 3], 25)  # class 0 has the largest scores
    table = label_entropy_curve(scores(-np.arange(100.0), labels), ks=[10, 25, 50, 100])
    assert table.columns.tolist() == ["k", "fraction", "entropy", "baseline_entropy"]
    assert table["entropy"].tolist() == pytest.approx([0.0, 0.0, 1.0, 2.0])
    assert table["baseline_entropy"].eq(2.0).all()
    assert table["fraction"].tolist() == [0.1, 0.25, 0.5, 1.0]


def test_label_entropy_curve_by_fraction() -> None:
    labels = np.arange(100) % 4  # balanced at every prefix of 4
    table = label_entropy_curve(scores(-np.arange(100.0), labels), fractions=[0.04, 0.2])
    assert table["k"].tolist() == [4, 20]
    assert table["entropy"].tolist() == pytest.approx([2.0, 2.0])


def test_topk_overlap_curve() -> None:
    labels = np.zeros(100, np.int64)
    a = scores(np.arange(100.0), labels)
    table = topk_overlap_curve(a, scores(-np.arange(100.0), labels), ks=[10, 50, 60, 100])
    assert table.columns.tolist() == ["k", "fraction", "overlap", "random_baseline"]
    assert table["overlap"].tolist() == pytest.approx([0.0, 0.0, 20 / 60, 1.0])
    assert table["random_baseline"].tolist() == pytest.approx([0.1, 0.5, 0.6, 1.0])
    assert topk_overlap_curve(a, a, fractions=[0.05])["overlap"].tolist() == [1.0]


def test_overlap_of_independent_rankings_near_random_baseline() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros(20000, np.int64)
    table = topk_overlap_curve(scores(rng.random(20000), labels), scores(rng.random(20000), labels), fractions=[0.2])
    assert table["overlap"].iloc[0] == pytest.approx(0.2, abs=0.02)


def test_analysis_errors() -> None:
    s = scores(np.arange(5.0), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="exactly one of ks or fractions"):
        label_entropy_curve(s)
    with pytest.raises(ValueError, match=r"sizes must lie in \[1, 5\]"):
        label_entropy_curve(s, ks=[0, 6])
    with pytest.raises(ValueError, match="same sample_ids"):
        topk_overlap_curve(s, s.assign(sample_id=s.sample_id + 1), ks=[1])


def test_source_spread_separates_source_models_from_retraining_seeds() -> None:
    """Two source models, two retraining seeds each: the retraining std is the mean of the
    within-source stds, the source std the std of the two sources' means."""
    from coreset.analysis import source_spread

    rows = pd.DataFrame({"source_seed": [0, 0, 1, 1], "target_model": "m", "method": "max_gradient",
                         "fraction": 0.01, "seed": [0, 1, 0, 1], "test_acc": [0.30, 0.32, 0.40, 0.44]})
    (row,) = source_spread(rows).to_dict("records")
    assert row["mean"] == pytest.approx(0.365)
    assert row["retrain_std"] == pytest.approx((np.std([0.30, 0.32], ddof=1) + np.std([0.40, 0.44], ddof=1)) / 2)
    assert row["source_std"] == pytest.approx(np.std([0.31, 0.42], ddof=1))
    assert (row["source_seeds"], row["retrain_seeds"]) == (2, 2)
    with pytest.raises(ValueError, match="lack \\['source_seed'\\]"):
        source_spread(rows.drop(columns="source_seed"))
