"""Herding and k-Center Greedy on the penultimate features (DeepCore's geometry-based methods),
class by class as DeepCore's default (``--balance True``) runs them.

Both are greedy sequences, and a greedy method's k-subset is the first k of its sequence, so
each class is ordered once, in full, and every fraction reads a prefix (scores 1 − i/n_c for the
i-th pick; see :func:`~coreset.methods.embedding.greedy_position_scores`). Every step is one
pass over the class's (n, d) matrix (a matrix-vector product) against O(n) state: an (n,)
vector of running distances, never the n x k distance matrix DeepCore keeps. A step is a
single query against all points, so a FAISS index would do the same product with more
overhead; BLAS does it. Ties in an arg-min/max go to the lower sample_id.

- Herding (Welling 2009; Chen et al. 2010): pick x_t = argmin_x ‖μ − (Σ_{s<t} x_s + x)/t‖, the
  image that brings the subset's mean closest to the class mean μ. DeepCore's code takes the
  arg-*max* of that distance (the image that moves the mean farthest away):
  ``variant="deepcore"`` reproduces it.
- k-Center Greedy (Sener & Savarese 2018): pick the image farthest from its nearest chosen
  centre, keeping min-distances up to date per centre. The paper starts from a labelled pool;
  there is none here, so the first centre is the image nearest the class mean (deterministic,
  so the subsets do not depend on the seed). DeepCore draws the first centre at random.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from coreset.methods.base import METHODS
from coreset.methods.embedding import EmbeddingMethod, EmbeddingParams, greedy_position_scores

HerdingVariant = Literal["paper", "deepcore"]


def herding_order(x: np.ndarray, k: int | None = None, variant: HerdingVariant = "paper") -> np.ndarray:
    """The first k (default all) rows of x in herding order; O(nd) memory, O(knd) time."""
    n = len(x)
    k = n if k is None else min(k, n)
    mu = x.mean(axis=0)
    sq = np.einsum("ij,ij->i", x, x)
    total = np.zeros(x.shape[1], dtype=x.dtype)
    taken = np.zeros(n, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    for t in range(k):
        residual = (t + 1) * mu - total  # ‖tμ − Σ − x‖² = ‖residual‖² + (sq − 2 x·residual)
        d2 = sq - 2.0 * (x @ residual)
        if variant == "paper":
            d2[taken] = np.inf
            p = int(np.argmin(d2))
        else:
            d2[taken] = -np.inf
            p = int(np.argmax(d2))
        order[t], taken[p] = p, True
        total += x[p]
    return order


def kcenter_greedy_order(x: np.ndarray, first: int, k: int | None = None) -> np.ndarray:
    """The first k (default all) centres of k-Center Greedy from centre ``first``; the state is one
    (n,) vector of squared distances to the nearest centre, updated per centre."""
    n = len(x)
    k = n if k is None else min(k, n)
    sq = np.einsum("ij,ij->i", x, x)
    nearest = np.full(n, np.inf, dtype=np.float64)
    order = np.empty(k, dtype=np.int64)
    p = first
    for t in range(k):
        order[t] = p
        d2 = np.maximum(sq - 2.0 * (x @ x[p]) + sq[p], 0.0)
        np.minimum(nearest, d2, out=nearest)
        nearest[p] = -np.inf  # a centre stays below every candidate
        p = int(np.argmax(nearest))
    return order


def nearest_to_mean(x: np.ndarray) -> int:
    return int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))


@dataclass(frozen=True)
class HerdingParams(EmbeddingParams):
    """``variant``: ``deepcore`` takes DeepCore's arg-max instead of the paper's arg-min."""

    variant: HerdingVariant = "paper"


@METHODS.register("herding")
class Herding(EmbeddingMethod):
    """Herding order per class: the subset's mean tracks the class mean."""

    name = "herding"
    Params = HerdingParams

    def __init__(self, epoch: int | None = None, variant: HerdingVariant = "paper") -> None:
        if variant not in ("paper", "deepcore"):
            raise ValueError(f"variant must be 'paper' or 'deepcore', got {variant!r}")
        super().__init__(epoch)
        self.variant = variant

    def class_scores(self, emb: np.ndarray) -> np.ndarray:
        return greedy_position_scores(herding_order(emb, variant=self.variant))


@METHODS.register("kcenter_greedy")
class KCenterGreedy(EmbeddingMethod):
    """k-Center Greedy order per class, from the image nearest the class mean."""

    name = "kcenter_greedy"

    def class_scores(self, emb: np.ndarray) -> np.ndarray:
        return greedy_position_scores(kcenter_greedy_order(emb, nearest_to_mean(emb)))
