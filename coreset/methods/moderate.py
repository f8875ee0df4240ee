"""Moderate coreset (Xia et al. 2023, "Moderate coreset: a universal method of data selection").

Each image's score is the Euclidean distance of its features to its class's median feature
vector (the coordinate-wise median, as the authors' code computes it). The subset is the
images of moderate distance: the k around the median rank of the pool, i.e. positions
⌊(n − k)/2 + ½⌋ … that + k − 1 in ascending distance (ties to the lower sample_id), neither the
easy images near the centre nor the far, hard ones. The authors rank every image of the
dataset together (a global budget, the default here); ``class_balanced`` takes the window of
each class.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from coreset.methods.base import METHODS
from coreset.methods.budget import half_up
from coreset.methods.embedding import EmbeddingMethod


@METHODS.register("moderate")
class Moderate(EmbeddingMethod):
    """Distance to the class median in feature space; the k of moderate distance."""

    name = "moderate"
    default_budget = "global"

    @property
    def ranking(self) -> None:
        """A window around the median is no top-k of the distance, so no top-k curve describes it."""
        return None

    def class_scores(self, emb: np.ndarray) -> np.ndarray:
        return np.linalg.norm(emb - np.median(emb, axis=0), axis=1)

    def pick(self, scores: pd.DataFrame, k: int, rng: np.random.Generator) -> np.ndarray:
        ids = scores["sample_id"].to_numpy(np.int64)
        ascending = ids[np.lexsort((ids, scores["score"].to_numpy(np.float64)))]
        low = half_up(0.5 * (len(ids) - k))
        return ascending[low:low + k]
