"""Submodular selection on each class's last-layer gradient similarity (DeepCore's ``Submodular``,
``--balance True``): facility location, graph cut and log-determinant, maximised greedily.

The similarity is DeepCore's: s_ij = ½ + ½·cos(g_i, g_j) ∈ [0, 1] of the last-layer gradients
(:func:`~coreset.methods.last_layer.shifted_cosine`, from the factorised Gram matrix). Each class
is ordered once, in full, and every fraction reads a prefix (scores 1 − i/n_c for the i-th
pick; ties to the lower sample_id): facility location by lazy greedy, graph cut and
log-determinant by the arg-max of their exact gain vector, the same picks at less cost there
(see :mod:`~coreset.methods.greedy`).

- Facility location: f(S) = Σ_{i∈V} max_{j∈S} s_ij, how well S covers the class.
- Graph cut: f(S) = λ Σ_{i∈V} Σ_{j∈S} s_ij − Σ_{i∈S} Σ_{j∈S} s_ij, coverage against redundancy;
  λ = 1 is DeepCore's (``GraphCut(lam=1.)``: then f is the cut between S and the rest). DeepCore's
  gain omits the −s_xx term of adding x; s_xx = 1 for every non-zero gradient, so the picks agree.
- Log-determinant: f(S) = log det(s_S), the volume the subset's similarity spans (diversity).
  Its gain log(s_xx − s_xSᵀ s_S⁻¹ s_Sx) comes from a Gram–Schmidt basis on s
  (:class:`~coreset.methods.greedy.ResidualBasis`); once s_S is singular-to-tolerance (rank(s) ≤
  C·(D+1) + 1) every gain is −∞ and the rest of the order is by sample_id. This is the default.
  DeepCore's code (``variant="deepcore"``) computes s_xSᵀ s_S⁺ s_Sx instead, a quantity that is
  zero from the empty set and only *grows* with S (it is s_xx minus the gain's argument). Its
  ``LazyGreedy`` (main.py's default optimiser) assumes shrinking gains: every stale bound stays 0,
  each fresh value is ≥ 0, so every step takes the next not-yet-chosen element in index order.
  DeepCore's subset is the first k images of the class in dataset order; the variant reproduces
  that (sample_id order).

DeepCore's per-class budget is Python's ``round(fraction·n_c)``; here budgets are the study's
(:mod:`coreset.methods.budget`). DeepCore computes its similarity in float32, here float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coreset.config_engine import at_least
from coreset.methods.base import METHODS, Variant, check_variant
from coreset.methods.embedding import EmbeddingParams, greedy_position_scores
from coreset.methods.greedy import ResidualBasis, greedy, lazy_greedy
from coreset.methods.last_layer import LastLayerMethod, shifted_cosine


class FacilityLocation:
    """f(S) = Σ_i max_{j∈S} s_ij for a similarity s ≥ 0; ``covered[i]`` = max_{j∈S} s_ij."""

    def __init__(self, similarity: np.ndarray) -> None:
        self.similarity = similarity
        self.covered = np.zeros(len(similarity))

    def gains(self) -> np.ndarray:
        left = self.similarity - self.covered[None, :]  # s symmetric: row i is column i
        return np.maximum(left, 0.0, out=left).sum(axis=1)

    def gain(self, i: int) -> float:
        return float(np.maximum(self.similarity[i] - self.covered, 0.0).sum())  # s symmetric: row i

    def add(self, i: int) -> None:
        np.maximum(self.covered, self.similarity[i], out=self.covered)


class GraphCut:
    """f(S) = λ Σ_{i∈V, j∈S} s_ij − Σ_{i,j∈S} s_ij; gains read an (n,) running sum over S."""

    def __init__(self, similarity: np.ndarray, lam: float) -> None:
        self.similarity = similarity
        self.coverage = lam * similarity.sum(axis=0)
        self.to_chosen = np.zeros(len(similarity))  # Σ_{j∈S} s_ij

    def gains(self) -> np.ndarray:
        return self.coverage - 2.0 * self.to_chosen - np.diag(self.similarity)

    def gain(self, i: int) -> float:
        return float(self.coverage[i] - 2.0 * self.to_chosen[i] - self.similarity[i, i])

    def add(self, i: int) -> None:
        self.to_chosen += self.similarity[i]


class LogDeterminant:
    """f(S) = log det(s_S); the gain of x is log of its residual against S's span."""

    def __init__(self, similarity: np.ndarray) -> None:
        self.basis = ResidualBasis(similarity)

    def gains(self) -> np.ndarray:
        residual = self.basis.residual
        live = residual > self.basis.tol * np.maximum(np.diag(self.basis.gram), 0.0)
        return np.log(residual, out=np.full(len(residual), -np.inf), where=live)

    def gain(self, i: int) -> float:
        return float(np.log(self.basis.residual[i])) if self.basis.independent(i) else -np.inf

    def add(self, i: int) -> None:
        self.basis.add(i)


@dataclass(frozen=True)
class GraphCutParams(EmbeddingParams):
    """``lam``: λ, the weight of coverage against redundancy (DeepCore's 1; f is monotone for λ ≥ 2)."""

    lam: float = 1.0

    def validate(self, prefix: str) -> None:
        at_least(f"{prefix}lam", self.lam, 0.0)


@dataclass(frozen=True)
class LogDeterminantParams(EmbeddingParams):
    """``variant``: ``deepcore`` reproduces DeepCore's code (the first images of each class)."""

    variant: Variant = "paper"


@METHODS.register("facility_location")
class FacilityLocationMethod(LastLayerMethod):
    """Facility location on the class's gradient similarity, in lazy greedy order."""

    name = "facility_location"

    def class_scores(self, gram: np.ndarray) -> np.ndarray:
        return greedy_position_scores(lazy_greedy(FacilityLocation(shifted_cosine(gram)), len(gram)))


@METHODS.register("graphcut")
class GraphCutMethod(LastLayerMethod):
    """Graph cut on the class's gradient similarity, in lazy greedy order."""

    name = "graphcut"
    Params = GraphCutParams

    def __init__(self, epoch: int | None = None, lam: float = 1.0) -> None:
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        super().__init__(epoch)
        self.lam = lam

    def class_scores(self, gram: np.ndarray) -> np.ndarray:
        return greedy_position_scores(greedy(GraphCut(shifted_cosine(gram), self.lam), len(gram)))


@METHODS.register("log_determinant")
class LogDeterminantMethod(LastLayerMethod):
    """Log-determinant of the class's gradient similarity, in lazy greedy order."""

    name = "log_determinant"
    Params = LogDeterminantParams

    def __init__(self, epoch: int | None = None, variant: Variant = "paper") -> None:
        check_variant(variant)
        super().__init__(epoch)
        self.variant = variant

    def class_scores(self, gram: np.ndarray) -> np.ndarray:
        if self.variant == "deepcore":
            return greedy_position_scores(np.arange(len(gram)))
        return greedy_position_scores(greedy(LogDeterminant(shifted_cosine(gram)), len(gram)))
