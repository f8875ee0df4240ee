"""Brute-force reference for GradSimCore counts: explicit vectors, full n×n matrix, float64.

Deliberately naive (no factorisation, no blocking) so that it checks the factorisation
identity used by the fast backends instead of repeating it. Tests only: memory is
n·C·(D+1) + n² doubles.
"""
from __future__ import annotations

import numpy as np
import torch

from coreset.similarity.factors import ArrayLike, as_tensor, check_factors, unit_rows


def cosine_matrix(err: ArrayLike, emb: ArrayLike) -> np.ndarray:
    """Full float64 cosine matrix of the explicit last-layer gradients (zero rows → 0)."""
    e = as_tensor(err, torch.float64)
    h1 = torch.cat([as_tensor(emb, torch.float64), torch.ones(len(e), 1, dtype=torch.float64)], dim=1)
    g = unit_rows((e[:, :, None] * h1[:, None, :]).reshape(len(e), -1))
    return (g @ g.T).numpy()


def count_similar(err: ArrayLike, emb: ArrayLike, threshold: float) -> np.ndarray:
    """For each i, the number of j ≠ i with cos(g_i, g_j) > Φ (strictly), in float64."""
    check_factors(err, emb, threshold)
    cos = cosine_matrix(err, emb)
    np.fill_diagonal(cos, -np.inf)
    return (cos > float(threshold)).sum(axis=1).astype(np.int64)
