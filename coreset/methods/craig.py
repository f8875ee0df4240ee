"""CRAIG (Mirzasoleiman et al. 2020, "Coresets for data-efficient training of machine learning
models"; DeepCore's ``Craig``, ``--balance True``).

Per class, facility location on s_ij = max d − d_ij + 10⁻³, d_ij = ‖g_i − g_j‖ the distance of
the last-layer gradients (DeepCore's similarity; from the factorised Gram matrix, see
:mod:`~coreset.methods.last_layer`), maximised by the same lazy greedy as the submodular
methods; every fraction is a prefix of the class's greedy order (scores 1 − i/n_c).

Weights. CRAIG trains on each chosen image j with weight γ_j = |C_j|, the images whose most
similar chosen image is j (j included). γ depends on the budget (a longer prefix splits the
clusters), so it cannot be a column of the one-row-per-image scores table. The analysis table
``craig_assignments`` records, per class, every change of an image's nearest chosen image along
the greedy order: row (label, sample_id, position, medoid) says that from the prefix of length
position + 1 on, sample_id's nearest chosen image is ``medoid`` (picked at ``position``). Every
image gets its own row when it is picked. :func:`subset_weights` turns it into γ for any CRAIG
subset, at any fraction, budget or seed; about n·ln(n_c) rows in the worst case.

Differences from DeepCore: its gradients are those of each batch's mean loss over batches of
``selection_batch`` (256) of the class in index order (``calc_gradient`` with
``CrossEntropyLoss``'s default reduction), so a class's short last batch has larger gradients
and distances; ``variant="deepcore"`` does the same
(:class:`~coreset.methods.last_layer.LastLayerMethod`'s ``selection_batch``), per-image gradients are the default.
Its weights start at 1 and add one per image of the cluster (γ + 1); ties in the nearest
chosen image go to the earlier pick here, to the lower index there. The retraining stage
trains unweighted, as it does every method (the GradSimCore paper's setting).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from coreset.methods.base import METHODS, Variant, check_variant, score_frame
from coreset.methods.embedding import EmbeddingParams, greedy_position_scores
from coreset.methods.greedy import lazy_greedy
from coreset.methods.last_layer import BatchMeanParams, LastLayerMethod, distances
from coreset.methods.submodular import FacilityLocation


def craig_similarity(gram: np.ndarray) -> np.ndarray:
    """max d − d + 10⁻³: DeepCore's shift of the negated distances to positive similarities."""
    d = distances(gram)
    top = d.max()
    d *= -1.0
    d += top + 1e-3
    return d


def assignments(similarity: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, position, medoid) local indices: each change of an image's nearest chosen image
    along ``order`` (strict improvement; an image always becomes its own when picked)."""
    best = np.full(len(similarity), -np.inf)
    images, positions, medoids = [], [], []
    for position, j in enumerate(order):
        improved = similarity[j] > best
        improved[j] = True
        changed = np.flatnonzero(improved)
        best[changed] = similarity[j, changed]
        images.append(changed)
        positions.append(np.full(len(changed), position))
        medoids.append(np.full(len(changed), j))
    return np.concatenate(images), np.concatenate(positions), np.concatenate(medoids)


def subset_weights(assignment: pd.DataFrame, subset: np.ndarray) -> pd.DataFrame:
    """``sample_id, weight`` (γ, the cluster size) of every image of a CRAIG subset, from its
    ``craig_assignments`` table; the subset must be a prefix of each class's greedy order."""
    chosen = set(np.asarray(subset).tolist())
    own = assignment[assignment.sample_id == assignment.medoid]
    k = own[own.sample_id.isin(chosen)].groupby("label").size()
    if k.sum() != len(chosen):
        raise ValueError("subset holds images the CRAIG assignment table does not know")
    rows = assignment[assignment.position < assignment.label.map(k).fillna(0).to_numpy()]
    nearest = rows.sort_values("position").groupby("sample_id").medoid.last()
    weights = nearest.value_counts()
    if not set(weights.index.tolist()) <= chosen or len(weights) != len(chosen):
        raise ValueError("subset is not a prefix of each class's CRAIG order")
    return pd.DataFrame({"sample_id": np.sort(list(chosen)),
                         "weight": weights.reindex(np.sort(list(chosen))).to_numpy(np.int64)})


@dataclass(frozen=True)
class CraigParams(BatchMeanParams, EmbeddingParams):
    """``variant``: ``deepcore`` takes DeepCore's gradients of each batch's mean loss."""


@METHODS.register("craig")
class Craig(LastLayerMethod):
    """Facility location on negated gradient distances per class; its assignments as a side table."""

    name = "craig"
    Params = CraigParams

    def __init__(self, epoch: int | None = None, variant: Variant = "paper", selection_batch: int = 256) -> None:
        check_variant(variant)
        super().__init__(epoch)
        self.variant = variant
        self.selection_batch = selection_batch if variant == "deepcore" else None  # paper: unused
        self._assignments: pd.DataFrame | None = None

    def class_scores(self, gram: np.ndarray) -> np.ndarray:
        """The scores alone (the embedding methods' contract); :meth:`score` also keeps the assignments."""
        return self.class_order_scores(gram)[0]

    def class_order_scores(self, gram: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """A class's position scores and its (image, position, medoid) assignment changes."""
        similarity = craig_similarity(gram)
        order = lazy_greedy(FacilityLocation(similarity), len(gram))
        return greedy_position_scores(order), assignments(similarity, order)

    def analysis_tables(self) -> dict[str, pd.DataFrame]:
        """Nearest-chosen-image changes along each class's order (``analysis/craig_assignments``)."""
        return {} if self._assignments is None else {"craig_assignments": self._assignments}

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        rows = self.class_rows(table)
        parts, tables = [], []
        for _, group in rows.groupby("label", sort=True):
            scores, (image, position, medoid) = self.class_order_scores(self.matrix(group))
            ids = group["sample_id"].to_numpy(np.int64)
            parts.append(score_frame(group, scores))
            tables.append(pd.DataFrame({"label": group["label"].iloc[0], "sample_id": ids[image],
                                        "position": position, "medoid": ids[medoid]}))
        self._assignments = pd.concat(tables, ignore_index=True)
        return pd.concat(parts, ignore_index=True).sort_values("sample_id").reset_index(drop=True)
