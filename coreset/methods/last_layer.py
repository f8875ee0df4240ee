"""What the last-layer gradient methods share: one class's Gram matrix of its last-layer gradients.

g_i = err_i ⊗ [h_i; 1] (weights and bias; DeepCore concatenates the bias gradient first, the
same vector up to a permutation of coordinates), so ⟨g_i, g_j⟩ = ⟨err_i, err_j⟩·(⟨h_i, h_j⟩ + 1):
the (n_c, n_c) Gram matrix comes from two small products and g, C·(D+1) values a sample (513k
at ImageNet shape), is never formed. Every similarity DeepCore computes from explicit gradient
vectors (cosine, Euclidean distance) and every inner product OMP needs is a function of it. An
n_c x n_c float64 matrix is 13.5 MB for an ImageNet class (1300), 290 MB for an MNIST one (6000).

The table's ``err`` and ``emb`` are read at one checkpoint, the trained model unless ``epoch``
names one of ``gradients.factor_epochs`` (as for the embedding methods; DeepCore computes the
gradients of its short selection training's model).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from coreset.config_engine import at_least
from coreset.methods.base import Variant
from coreset.methods.embedding import EmbeddingMethod
from coreset.similarity import stack_list_column


def gradient_gram(err: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """⟨g_i, g_j⟩ for the rows of one class, in float64, from the factors."""
    e = np.asarray(err, dtype=np.float64)
    h = np.asarray(emb, dtype=np.float64)
    return (e @ e.T) * (h @ h.T + 1.0)


def batch_mean_weights(n: int, selection_batch: int) -> np.ndarray:
    """1/|batch| of each of a class's ``n`` rows (in sample_id order), in batches of
    ``selection_batch``: DeepCore's gradients are those of each batch's *mean* loss
    (``CrossEntropyLoss``'s default reduction), so a class's short last batch weighs more."""
    if selection_batch < 1:
        raise ValueError(f"selection_batch must be >= 1, got {selection_batch}")
    sizes = np.minimum(selection_batch, n - np.arange(n) // selection_batch * selection_batch)
    return 1.0 / sizes


def batch_mean_gram(gram: np.ndarray, selection_batch: int) -> np.ndarray:
    """The Gram matrix of the gradients w_i·g_i, w = :func:`batch_mean_weights`."""
    w = batch_mean_weights(len(gram), selection_batch)
    return gram * np.outer(w, w)


@dataclass(frozen=True)
class BatchMeanParams:
    """``variant``: ``deepcore`` reproduces DeepCore's code, whose gradients are those of each
    batch's mean loss over batches of ``selection_batch`` (its ``--batch``, 256) of the class in
    index order (:func:`batch_mean_weights`); shared by the methods whose DeepCore variant does."""

    variant: Variant = "paper"
    selection_batch: int = 256

    def validate(self, prefix: str) -> None:
        at_least(f"{prefix}selection_batch", self.selection_batch, 1)


def shifted_cosine(gram: np.ndarray) -> np.ndarray:
    """½ + ½·cos(g_i, g_j) ∈ [0, 1], DeepCore's ``cossim_np``: non-negative, as facility location and
    graph cut need. A zero gradient (``err`` all zero after float16 rounding) has cosine 0 with
    everything, itself included, as in :mod:`coreset.similarity.factors` (DeepCore gets NaN)."""
    norm = np.sqrt(np.maximum(np.diag(gram), 0.0))
    inverse = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    s = gram * inverse[:, None]  # the one n x n allocation; the rest works in place
    s *= inverse[None, :]
    np.clip(s, -1.0, 1.0, out=s)
    np.fill_diagonal(s, (norm > 0).astype(np.float64))  # exactly 1, not 1 ± rounding: ties stay ties
    s *= 0.5
    s += 0.5
    return s


def distances(gram: np.ndarray) -> np.ndarray:
    """‖g_i − g_j‖ = √(G_ii + G_jj − 2G_ij), clamped at 10⁻¹² under the root as DeepCore's
    ``euclidean_dist_pair_np`` does."""
    sq = np.diag(gram)
    d = gram * -2.0
    d += sq[:, None]
    d += sq[None, :]
    np.maximum(d, 1e-12, out=d)
    return np.sqrt(d, out=d)


class LastLayerMethod(EmbeddingMethod):
    """Scores each class from the Gram matrix of its last-layer gradients: of each image's
    loss, or with ``selection_batch`` set (a DeepCore variant) of each batch's mean loss."""

    selection_batch: int | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return ("err", "emb")

    def matrix(self, group: pd.DataFrame) -> np.ndarray:
        gram = gradient_gram(stack_list_column(group["err"]), stack_list_column(group["emb"]))
        return gram if self.selection_batch is None else batch_mean_gram(gram, self.selection_batch)
