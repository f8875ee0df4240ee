"""CAL, Contrastive Active Learning (Margatina et al. 2021, "Active learning by acquiring
contrastive examples"; DeepCore's ``Cal`` with its defaults: ``balance=True``, Euclidean
metric, 10 neighbours).

An image is contrastive when the images nearest it in feature space are predicted differently:
s_i = (1/k) Σ_{j ∈ kNN(i)} KL(p_j ‖ p_i), with p = err + onehot(y) the model's probabilities
(floored at 2⁻²⁴, below which the float16 table holds no value) and the k nearest images of the
same class in Euclidean distance, the image itself left out (for exact duplicates: the farthest
of the k + 1 found). The highest scores are selected: the paper acquires the most contrastive
candidates. Neighbours come from FAISS's exact search (``IndexFlatL2``; on the GPU when FAISS
sees one), k + 1 per image of its class, so the (n_c, n_c) distance matrix DeepCore sorts is
never formed.

Features: DeepCore finds neighbours with an ImageNet-pretrained ResNet-18 at 224 px, and the
probabilities with its selection model. Here both come from the study's model (``emb`` and
``err`` at the trained checkpoint, or ``epoch``): nothing downloads weights, and the paper
itself uses the model being trained.

``variant="deepcore"`` reproduces DeepCore's code where it departs from the paper: it scores
the symmetric divergence ½KL(p_i‖p_j) + ½KL(p_j‖p_i) and keeps the *lowest* scores
(``np.argsort(scores)[::1][:k]``, ascending), the least contrastive images; the score is then
that divergence negated, so the highest-first selection keeps the same images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from coreset.config_engine import in_range
from coreset.methods.base import METHODS, Variant, check_variant
from coreset.methods.embedding import EmbeddingMethod, EmbeddingParams
from coreset.methods.geometry import PROBABILITY_FLOOR
from coreset.methods.uncertainty import probabilities
from coreset.similarity import stack_list_column


def nearest_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """(n, min(k, n − 1)) indices of each row's nearest other rows (Euclidean), nearest first."""
    import faiss  # here, not at import: the methods load where FAISS is not installed (a bare GPU node)

    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return np.empty((n, 0), dtype=np.int64)
    data = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatL2(data.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(data)
    _, found = index.search(data, k + 1)
    own = found == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True  # the image is not among its k + 1 (duplicates): drop the farthest
    return found[~own].reshape(n, k).astype(np.int64)


def contrastive_scores(p: np.ndarray, neighbours: np.ndarray, symmetric: bool = False) -> np.ndarray:
    """Mean over each row's neighbours j of KL(p_j ‖ p_i), or of the symmetric divergence."""
    if neighbours.shape[1] == 0:
        return np.zeros(len(p))
    logs = np.log(p)
    a = np.einsum("ij,ij->i", p, logs)  # Σ p log p
    cross = np.einsum("imc,ic->im", p[neighbours], logs)  # p_j · log p_i
    kl_j_i = a[neighbours] - cross
    if not symmetric:
        return kl_j_i.mean(axis=1)
    kl_i_j = a[:, None] - np.einsum("ic,imc->im", p, logs[neighbours])
    return (0.5 * (kl_i_j + kl_j_i)).mean(axis=1)


@dataclass(frozen=True)
class CalParams(EmbeddingParams):
    """``neighbors``: k (DeepCore's 10, and its bound 0 < k < 100); ``variant``: ``deepcore``
    keeps the least contrastive images under the symmetric divergence, as DeepCore's code does."""

    neighbors: int = 10
    variant: Variant = "paper"

    def validate(self, prefix: str) -> None:
        in_range(f"{prefix}neighbors", self.neighbors, 0, 100, hi_open=True)


@METHODS.register("cal")
class Cal(EmbeddingMethod):
    """Per class: the mean KL divergence of an image's nearest neighbours' predictions from its own."""

    name = "cal"
    Params = CalParams

    def __init__(self, epoch: int | None = None, neighbors: int = 10, variant: Variant = "paper") -> None:
        if not 0 < neighbors < 100:
            raise ValueError(f"neighbors must lie in 1..99 (DeepCore's bound), got {neighbors}")
        check_variant(variant)
        super().__init__(epoch)
        self.neighbors = neighbors
        self.variant = variant

    @property
    def columns(self) -> tuple[str, ...]:
        return ("emb", "err")

    def group_scores(self, group: pd.DataFrame) -> np.ndarray:
        emb = stack_list_column(group["emb"]).astype(np.float64)
        p = np.maximum(probabilities(group), PROBABILITY_FLOOR)
        scores = contrastive_scores(p, nearest_neighbours(emb, self.neighbors), self.variant == "deepcore")
        return -scores if self.variant == "deepcore" else scores
