"""The optimisers of the submodular methods and OMP: lazy greedy, and a Gram–Schmidt basis that
works from a Gram matrix alone.

Lazy greedy (Minoux 1978). For a submodular f the gain f(S ∪ {x}) − f(S) only shrinks as S
grows, so a gain computed at an earlier step is an upper bound of the current one. The queue
holds (bound, index, step it was computed at); the top is re-evaluated until a fresh entry
is on top, which is then the greedy pick. Ordering by (−bound, index) makes it the *lowest
index* among the maximisers, the pick a naive greedy with ``argmax`` makes: a lower index with
the same true gain has a bound at least as high and so pops first. The full order is computed
once per class; every budget is a prefix of it.

Lazy greedy pays where a gain is expensive and most bounds stay tight: facility location (a gain
is an O(n) pass; a pick changes few gains). Graph cut and log-determinant keep state from which
every exact gain is one (n,) vector (an O(n) update per pick, which every gain depends on), so
nearly every bound goes stale at each pick and the queue re-evaluates most of the class per
step; :func:`greedy` takes the arg-max of that vector instead (the same picks, ties to the lower
index). At 2000 images, one thread: graph cut 2.7 s lazy vs 0.1 s by vector.
"""
from __future__ import annotations

import heapq
from typing import Protocol

import numpy as np


class Objective(Protocol):
    """A set function built up one element at a time."""

    def gains(self) -> np.ndarray:
        """Every element's gain given the elements added so far (chosen ones: any value)."""

    def gain(self, i: int) -> float:
        """Element i's gain given the elements added so far."""

    def add(self, i: int) -> None:
        """Add element i to the set."""


def lazy_greedy(objective: Objective, n: int) -> np.ndarray:
    """All n elements in greedy order (ties to the lower index), from stale upper bounds."""
    heap = [(-float(g), i, 0) for i, g in enumerate(objective.gains())]
    heapq.heapify(heap)
    order = np.empty(n, dtype=np.int64)
    for step in range(n):
        while True:
            _, i, computed = heapq.heappop(heap)
            if computed == step:
                break
            heapq.heappush(heap, (-objective.gain(i), i, step))
        order[step] = i
        objective.add(i)
    return order


def greedy(objective: Objective, n: int) -> np.ndarray:
    """All n elements in greedy order (ties to the lower index), from every exact gain per step."""
    left = np.arange(n)
    order = np.empty(n, dtype=np.int64)
    for step in range(n):
        at = int(np.argmax(objective.gains()[left]))  # -inf ties too go to the lower index
        order[step] = left[at]
        left = np.delete(left, at)
        objective.add(int(order[step]))
    return order


class ResidualBasis:
    """Gram–Schmidt over vectors v_i known only by their Gram matrix M_ij = ⟨v_i, v_j⟩.

    After adding j_1..j_t, ``residual[i]`` = ‖v_i − P_t v_i‖², P_t the projection onto their span,
    and row s of the basis holds ⟨v_i, q_s⟩ for the orthonormal q_s. Adding j costs one (t, n)
    matrix-vector product: ⟨v_i, q_{t+1}⟩ = (M_ij − Σ_s ⟨v_i, q_s⟩⟨v_j, q_s⟩)/√residual[j]; the
    basis holds at most rank(M) rows of n. A vector already in the span
    (``residual[j] ≤ tol·M_jj``) adds no direction.
    """

    def __init__(self, gram: np.ndarray, tol: float = 1e-10) -> None:
        self.gram = gram
        self.tol = tol
        self.residual = np.diag(gram).astype(np.float64).copy()
        self._basis = np.empty((min(len(gram), 64), len(gram)))
        self._rank = 0

    def independent(self, j: int) -> bool:
        """Whether v_j still has a direction outside the span."""
        return bool(self.residual[j] > self.tol * max(self.gram[j, j], 0.0))

    def add(self, j: int) -> np.ndarray | None:
        """Add v_j; returns ⟨v_i, q⟩ for its new direction q, or None when it has none."""
        if not self.independent(j):
            return None
        basis = self._basis[:self._rank]
        column = (self.gram[j] - basis.T @ basis[:, j]) / np.sqrt(self.residual[j])  # M symmetric: row j
        if self._rank == len(self._basis):
            grow = min(len(self._basis), len(self.gram) - len(self._basis))
            self._basis = np.concatenate([self._basis, np.empty((grow, len(self.gram)))])
        self._basis[self._rank] = column
        self._rank += 1
        self.residual -= column * column
        self.residual[j] = 0.0
        return column
