"""The one rule that cuts a class-sorted sequence into shards of whole classes: pack shards
(:func:`coreset.data.pack.plan_pack`, weighed in bytes) and gradient shards
(:func:`coreset.stages.gradients.class_shards`, weighed in rows) are cut by it, so a
streaming pack's shards can be the gradient stage's work units."""
from __future__ import annotations

import numpy as np

__all__ = ["class_cut", "is_sorted"]


def is_sorted(labels: np.ndarray) -> bool:
    """Whether ``labels`` never decrease (a folder's canonical order is sorted by class)."""
    return bool(np.all(np.diff(np.asarray(labels)) >= 0))


def class_cut(labels: np.ndarray, weights: np.ndarray, target: float) -> list[tuple[int, int]]:
    """``(first, count)`` ranges over class-sorted ``labels``: whole classes in order are grouped
    while their total weight fits in ``target``; a class heavier than ``target`` gets ranges of
    its own, ``ceil(weight / target)`` parts of near-equal counts. So a range holds whole
    classes or part of a class whose every range holds only it (what the class-wise score
    stage relies on: each class lies in one run of shards)."""
    labels, weights = np.asarray(labels), np.asarray(weights, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.array([], np.int64)
    bounds = np.r_[starts, len(labels)].astype(np.int64)
    class_weight = np.add.reduceat(weights, starts) if len(labels) else np.array([])
    ranges: list[tuple[int, int]] = []
    first, filled = 0, 0.0
    for lo, hi, w in zip(bounds[:-1].tolist(), bounds[1:].tolist(), class_weight.tolist(), strict=True):
        if lo > first and filled + w > target:
            ranges.append((first, lo - first))
            first, filled = lo, 0.0
        if w > target:
            parts = min(int(np.ceil(w / target)), hi - lo)
            ranges.extend((int(p[0]), len(p)) for p in np.array_split(np.arange(lo, hi), parts))
            first = hi
            continue
        filled += w
    if len(labels) > first:
        ranges.append((first, len(labels) - first))
    return ranges
