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
- Contextual Diversity (Agarwal et al. 2020, as DeepCore implements it for classification):
  k-Center Greedy on the class probabilities p = err + onehot(y) with the symmetric KL
  divergence ½KL(p‖q) + ½KL(q‖p) = ½Σ_j (p_j − q_j)(log p_j − log q_j) as its distance, from
  the image nearest (in that divergence) the class's mean probability vector. The paper's
  region-wise, entropy-weighted class contexts reduce, for one label per image, to comparing
  the probability vectors; DeepCore does exactly that. Probabilities are floored at 2⁻²⁴, below
  which the float16 table holds no value (DeepCore's float32 softmax never reaches 0 either).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from coreset.methods.base import METHODS, Variant, check_variant
from coreset.methods.embedding import EmbeddingMethod, EmbeddingParams, greedy_position_scores
from coreset.methods.uncertainty import probabilities

PROBABILITY_FLOOR = 2.0**-24


def herding_order(x: np.ndarray, k: int | None = None, variant: Variant = "paper") -> np.ndarray:
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


def farthest_first(distance_to: Callable[[int], np.ndarray], n: int, first: int, k: int | None = None) -> np.ndarray:
    """The first k (default all) centres of k-Center Greedy from centre ``first``, where
    ``distance_to(p)`` gives the (n,) distances of every point to point p. The state is one (n,)
    vector of distances to the nearest centre, updated per centre."""
    k = n if k is None else min(k, n)
    nearest = np.full(n, np.inf, dtype=np.float64)
    order = np.empty(k, dtype=np.int64)
    p = first
    for t in range(k):
        order[t] = p
        np.minimum(nearest, distance_to(p), out=nearest)
        nearest[p] = -np.inf  # a centre stays below every candidate
        p = int(np.argmax(nearest))
    return order


def kcenter_greedy_order(x: np.ndarray, first: int, k: int | None = None) -> np.ndarray:
    """k-Center Greedy in Euclidean space (squared distances: the same arg-max)."""
    sq = np.einsum("ij,ij->i", x, x)
    return farthest_first(lambda p: np.maximum(sq - 2.0 * (x @ x[p]) + sq[p], 0.0), len(x), first, k)


def nearest_to_mean(x: np.ndarray) -> int:
    return int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))


@dataclass(frozen=True)
class HerdingParams(EmbeddingParams):
    """``variant``: ``deepcore`` takes DeepCore's arg-max instead of the paper's arg-min."""

    variant: Variant = "paper"


@METHODS.register("herding")
class Herding(EmbeddingMethod):
    """Herding order per class: the subset's mean tracks the class mean."""

    name = "herding"
    Params = HerdingParams

    def __init__(self, epoch: int | None = None, variant: Variant = "paper") -> None:
        check_variant(variant)
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


def symmetric_kl_order(p: np.ndarray, k: int | None = None) -> np.ndarray:
    """k-Center Greedy under the symmetric KL divergence of probability rows p (all > 0), from
    the row nearest the mean row: ½(a_i + a_c − p_i·log p_c − log p_i·p_c), a = Σ p log p."""
    logs = np.log(p)
    a = np.einsum("ij,ij->i", p, logs)
    mean = p.mean(axis=0)
    first = int(np.argmin(((p - mean) * (logs - np.log(mean))).sum(axis=1)))
    return farthest_first(lambda c: np.maximum(0.5 * (a + a[c] - p @ logs[c] - logs @ p[c]), 0.0), len(p), first, k)


@METHODS.register("contextual_diversity")
class ContextualDiversity(EmbeddingMethod):
    """k-Center Greedy per class on the probabilities, under the symmetric KL divergence."""

    name = "contextual_diversity"
    column = "err"

    def matrix(self, group: pd.DataFrame) -> np.ndarray:
        return np.maximum(probabilities(group), PROBABILITY_FLOOR)

    def class_scores(self, emb: np.ndarray) -> np.ndarray:
        return greedy_position_scores(symmetric_kl_order(emb))
