"""Subset diagnostics from last-layer factors: hand-computed cosines and near-duplicates, the
cosine of explicit gradients err ⊗ [h; 1] on random factors (both the union and per-subset
paths), the sample cap, and the table completed with the classes a subset misses."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from coreset.stages import subset_diagnostics as diagnostics


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _factors(err: list[list[float]], emb: list[list[float]], label: int = 0, first_id: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": np.arange(first_id, first_id + len(err)), "label": label, "epoch": 3,
                         "err": [np.array(e) for e in err], "emb": [np.array(h) for h in emb]})


def _subsets(members: dict[str, list[int]], label: int = 0) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"method": m, "fraction": 0.5, "seed": 0, "sample_id": ids, "label": label})
                      for m, ids in members.items()], ignore_index=True)


def _row(table: pd.DataFrame, method: str) -> pd.Series:
    (row,) = [r for _, r in table.iterrows() if r["method"] == method]
    return row


def test_hand_computed_cosines_and_near_duplicates() -> None:
    # emb all 0, so [h; 1] = [0, 1] for every image and cos(g_i, g_j) = cos(err_i, err_j):
    # images 0 and 1 are identical, 2 is orthogonal to both, 3 at 45° to 0, 1 and 2.
    factors = _factors([[1, 0], [1, 0], [0, 1], [1, 1]], [[0]] * 4)
    out = diagnostics.diagnose(factors, _subsets({"a": [0, 1, 2], "b": [0, 2, 3], "c": [3]}))
    a, b, c = _row(out, "a"), _row(out, "b"), _row(out, "c")
    assert (a["images"], a["compared"]) == (3, 3)
    assert a["mean_cosine"] == pytest.approx((1 + 0 + 0) / 3)  # pairs (0,1), (0,2), (1,2)
    assert a["near_duplicates"] == 2  # the identical pair counts both images
    assert b["mean_cosine"] == pytest.approx((0 + 2 / math.sqrt(2)) / 3)  # (0,2)=0, (0,3)=(2,3)=1/√2
    assert b["near_duplicates"] == 0
    assert math.isnan(c["mean_cosine"]) and c["near_duplicates"] == 0 and c["images"] == 1


def test_the_bias_coordinate_counts_and_zero_gradients_match_nothing() -> None:
    # Same err throughout. h = 1 and h = 2 point the same way, but [1, 1] and [2, 1] do not:
    # cos = 3/√10 ≈ 0.949, below the threshold; h = 1 twice is a near-duplicate pair.
    factors = _factors([[1, -1], [1, -1], [1, -1], [0, 0]], [[1], [1], [2], [1]])
    out = diagnostics.diagnose(factors, _subsets({"bias": [0, 2], "same": [0, 1], "zero": [0, 1, 3]}))
    assert _row(out, "bias")["mean_cosine"] == pytest.approx(3 / math.sqrt(10), rel=1e-6)
    assert _row(out, "bias")["near_duplicates"] == 0
    assert _row(out, "same")["mean_cosine"] == pytest.approx(1.0) and _row(out, "same")["near_duplicates"] == 2
    zero = _row(out, "zero")  # an all-zero err has cosine 0 with everything
    assert zero["mean_cosine"] == pytest.approx(1 / 3) and zero["near_duplicates"] == 2
    assert diagnostics.diagnose(factors, _subsets({"x": [0, 2]}), threshold=0.9)["near_duplicates"].item() == 2


def _explicit(err: np.ndarray, emb: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Mean pairwise cosine and near-duplicates of explicit gradient vectors err ⊗ [h; 1]."""
    h1 = np.hstack([emb[ids], np.ones((len(ids), 1))])
    g = (err[ids][:, :, None] * h1[:, None, :]).reshape(len(ids), -1)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cos = g @ g.T
    np.fill_diagonal(cos, np.nan)
    return float(np.nanmean(cos)), int((np.nanmax(cos, axis=1) >= diagnostics.NEAR_DUPLICATE_COSINE).sum())


def test_cosines_of_explicit_gradients_on_both_paths(rng: np.random.Generator) -> None:
    n, classes = 40, 2
    err, emb = rng.normal(size=(n * classes, 5)), rng.normal(size=(n * classes, 7))
    err[5], emb[5] = err[3], emb[3]  # a duplicate pair in class 0
    parts = [_factors(err[c * n:(c + 1) * n].tolist(), emb[c * n:(c + 1) * n].tolist(), c, c * n)
             for c in range(classes)]
    # Class 0: nested subsets (one matrix over the union); class 1: disjoint ones (a product each).
    chosen = {"wide": list(range(30)), "narrow": list(range(20)), "tiny": [3, 5, 7]}
    disjoint = {"wide": list(range(n, n + 10)), "narrow": list(range(n + 10, n + 20)), "tiny": [n + 20, n + 21]}
    subsets = pd.concat([_subsets(chosen, 0), _subsets(disjoint, 1)], ignore_index=True)
    out = diagnostics.diagnose(pd.concat(parts, ignore_index=True), subsets)
    assert len(out) == 6
    for _, row in out.iterrows():
        ids = np.array((chosen if row["label"] == 0 else disjoint)[row["method"]])
        mean, near = _explicit(err, emb, ids)
        assert row["mean_cosine"] == pytest.approx(mean, abs=1e-6), (row["method"], row["label"])
        assert row["near_duplicates"] == near
    assert _row(out[out.label == 0], "tiny")["near_duplicates"] == 2


def test_large_class_subsets_are_sampled_with_a_fixed_seed(rng: np.random.Generator) -> None:
    factors = _factors(rng.normal(size=(50, 3)).tolist(), rng.normal(size=(50, 4)).tolist(), label=7)
    subsets = _subsets({"big": list(range(40))}, label=7)
    once = diagnostics.diagnose(factors, subsets, max_compared=10)
    assert (once["images"].item(), once["compared"].item()) == (40, 10)
    pd.testing.assert_frame_equal(once, diagnostics.diagnose(factors, subsets.sample(frac=1.0, random_state=1),
                                                             max_compared=10))
    full = diagnostics.diagnose(factors, subsets)
    assert full["compared"].item() == 40 and full["mean_cosine"].item() != once["mean_cosine"].item()
    with pytest.raises(ValueError, match="have no gradient row"):
        diagnostics.diagnose(factors, _subsets({"lost": [3, 99]}, label=7))


def test_merge_gives_every_subset_a_row_for_every_class() -> None:
    subsets = pd.concat([_subsets({"a": [0, 1]}, 0), _subsets({"b": [2]}, 1)], ignore_index=True)
    factors = pd.concat([_factors([[1, 0], [1, 0]], [[0]] * 2, 0), _factors([[0, 1]], [[0]], 1, 2)],
                        ignore_index=True)
    part = diagnostics.diagnose(factors, subsets)
    out = diagnostics.merge([part], subsets, np.array([0, 1, 2]))
    assert list(out.columns) == diagnostics.COLUMNS and len(out) == 2 * 3
    assert out.groupby("method")["images"].sum().to_dict() == {"a": 2, "b": 1}
    empty = out[(out.method == "a") & (out.label == 2)].iloc[0]
    assert (empty["images"], empty["compared"], empty["near_duplicates"]) == (0, 0, 0)
    assert math.isnan(empty["mean_cosine"])


def test_units_get_the_subset_rows_of_their_classes() -> None:
    # A shard's first entry is its first sample's label: shard 0 holds classes 0-3 though it says 1.
    table = {"shard_labels": [[1, 3], [4, 4], [4, 4], [6, 9]]}
    subsets = pd.DataFrame({"method": "a", "fraction": 0.5, "seed": 0, "sample_id": np.arange(10),
                            "label": [0, 1, 2, 3, 4, 4, 6, 9, 7, 5]})
    work = diagnostics.unit_work(subsets, table)
    assert [(shards, sorted(rows.label)) for shards, rows in work] == [
        ([0], [0, 1, 2, 3]), ([1, 2], [4, 4]), ([3], [5, 6, 7, 9])]
    assert diagnostics.unit_work(subsets[subsets.label >= 4], table)[0][0] == [1, 2]  # unit 0 has no task
    with pytest.raises(ValueError, match="classes \\[1\\] have no gradient rows"):
        diagnostics.diagnose(_factors([[1, 0]], [[0]], label=0), _subsets({"a": [0]}, label=1))
