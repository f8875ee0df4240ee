"""GRAD-MATCH (Killamsetty et al. 2021, "GRAD-MATCH: gradient matching based data subset selection
for efficient deep model training"; DeepCore's ``GradMatch``, ``--balance True``).

Per class, orthogonal matching pursuit picks images whose last-layer gradients, with ridge-
regularised weights, match the class's mean gradient b (DeepCore's target without a validation
split): min_w ‖b − Σ_{j∈S} w_j g_j‖² + λ‖w‖², λ = 1 (DeepCore's ``lam``). Each step takes the
image of largest (signed) ⟨g_i, r⟩, r the residual of the current least-squares fit, then refits.

Everything OMP needs is an inner product, so it runs on the class's Gram matrix G (see
:mod:`~coreset.methods.last_layer`), never on the C·(D+1)-long gradients: the ridge fit is
plain least squares on vectors whose Gram matrix is G + λI (g_j extended by √λ·e_j, b by 0),
and OMP's residual projections follow from a Gram–Schmidt basis on it
(:class:`~coreset.methods.greedy.ResidualBasis`): ⟨g_i, r⟩ starts at ⟨g_i, b⟩ = mean_j G_ij and
loses (⟨g_j, r⟩/√res_j)·⟨g_i, q⟩ when j adds the direction q. A step costs O(n_c·t).

The OMP order stops at the largest configured fraction's budget (``Context.fractions``: OMP's
cost grows with its steps, and CORDS users report GRAD-MATCH as the slowest selection there
is); every fraction is a prefix (scores 1 − i/n_c), and images past it score 0, unranked.
Differences from DeepCore: its subset is the images of non-zero weight after a final NNLS fit,
which can be fewer than the budget; here the subset is the budget's OMP prefix, exactly k
images, and no weights are recorded. DeepCore fits its first pick without the ridge
(w = ⟨g_j, b⟩/‖g_j‖²), which changes which image comes second, and its gradients are those
of each batch's mean loss over batches of ``selection_batch`` (256) of the class in index
order (``calc_gradient`` with ``CrossEntropyLoss``'s default reduction), so a class's short
last batch weighs more, in the picks and in the target. ``variant="deepcore"`` does both
(:class:`~coreset.methods.last_layer.LastLayerMethod`'s ``selection_batch``); the paper's per-image gradients with
the ridge at every step are the default.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coreset.config_engine import at_least
from coreset.methods.base import METHODS, Context, Variant, check_variant
from coreset.methods.embedding import EmbeddingParams, greedy_position_scores, prefix_length
from coreset.methods.greedy import ResidualBasis
from coreset.methods.last_layer import BatchMeanParams, LastLayerMethod


def omp_order(gram: np.ndarray, lam: float = 1.0, variant: Variant = "paper", steps: int | None = None
              ) -> np.ndarray:
    """The first ``steps`` rows (default: every row) in OMP order (ties to the lower index) for
    the target b = mean_i g_i."""
    n = len(gram)
    steps = n if steps is None else min(steps, n)
    ridged = gram.copy()
    ridged.flat[:: n + 1] += lam  # G + λI
    basis = ResidualBasis(ridged)
    start = gram.mean(axis=1)  # ⟨g_i, b⟩
    projection = start.copy()  # ⟨g_i, r⟩
    left = np.arange(n)
    order = np.empty(steps, dtype=np.int64)
    for step in range(steps):
        seen = projection
        if step == 1 and variant == "deepcore" and gram[order[0], order[0]] > 0:  # unregularised first fit
            first = order[0]
            seen = start - start[first] / gram[first, first] * gram[:, first]
        at = int(np.argmax(seen[left]))
        j = order[step] = left[at]
        left = np.delete(left, at)
        if basis.independent(j):
            scale = projection[j] / np.sqrt(basis.residual[j])
            projection = projection - scale * basis.add(j)
    return order


@dataclass(frozen=True)
class GradMatchParams(BatchMeanParams, EmbeddingParams):
    """``lam``: the ridge λ on the weights (DeepCore's 1); ``variant``: ``deepcore`` fits the first
    pick without the ridge and weights the gradients by 1/|batch| in batches of
    ``selection_batch``, as DeepCore's code does."""

    lam: float = 1.0

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        at_least(f"{prefix}lam", self.lam, 0.0)


@METHODS.register("gradmatch")
class GradMatch(LastLayerMethod):
    """OMP on the class's last-layer gradients towards their mean, from the Gram matrix."""

    name = "gradmatch"
    Params = GradMatchParams

    def __init__(self, epoch: int | None = None, lam: float = 1.0, variant: Variant = "paper",
                 selection_batch: int = 256, max_fraction: float = 1.0) -> None:
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if not 0 < max_fraction <= 1:
            raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction}")
        check_variant(variant)
        super().__init__(epoch)
        self.lam = lam
        self.variant = variant
        self.selection_batch = selection_batch if variant == "deepcore" else None  # paper: unused
        self.max_fraction = max_fraction

    @classmethod
    def from_study(cls, params: GradMatchParams, context: Context) -> GradMatch:
        method = super().from_study(params, context)
        method.max_fraction = max(context.fractions)
        return method

    def class_scores(self, gram: np.ndarray) -> np.ndarray:
        """The OMP prefix scores 1 − i/n (i-th pick); the images past it, which no configured
        fraction selects, score 0 (unranked): below every pick."""
        n = len(gram)
        return greedy_position_scores(omp_order(gram, self.lam, self.variant, prefix_length(n, self.max_fraction)), n)
