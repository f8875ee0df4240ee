"""GradSimCore similarity counting: for one class at one checkpoint, how many class-mates
have a last-layer gradient cosine above Φ. Backends are looked up by name in ``BACKENDS``;
all share ``count(err, emb, threshold, **options) -> int64 counts``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from coreset.registry import Registry
from coreset.similarity import brute, faiss_range, gram
from coreset.similarity.auto import choose_backend
from coreset.similarity.factors import ArrayLike, stack_list_column
from coreset.similarity.threshold import quantile_threshold

CountFn = Callable[..., np.ndarray]

BACKENDS: Registry[CountFn] = Registry("similarity backend")
BACKENDS.register("brute")(brute.count_similar)
BACKENDS.register("faiss")(faiss_range.count_similar)
BACKENDS.register("gram")(gram.count_similar)


@BACKENDS.register("auto")
def count_auto(err: ArrayLike, emb: ArrayLike, threshold: float, **options: object) -> np.ndarray:
    """The measured-fastest backend for this problem size (see ``choose_backend``);
    ``options`` override the chosen ones (e.g. ``block_size``)."""
    name, chosen = choose_backend(err.shape[0], err.shape[1], emb.shape[1])
    return BACKENDS.get(name)(err, emb, threshold, **{**chosen, **options})


def count_similar(err: ArrayLike, emb: ArrayLike, threshold: float, backend: str = "auto",
                  **options: object) -> np.ndarray:
    """For each i, #{j ≠ i : cos(g_i, g_j) > Φ} with g = err ⊗ [h; 1]; see ``factors`` for zero gradients."""
    return BACKENDS.get(backend)(err, emb, threshold, **options)


__all__ = ["BACKENDS", "choose_backend", "count_similar", "quantile_threshold", "stack_list_column"]
