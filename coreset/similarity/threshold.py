"""Per-class, per-checkpoint similarity threshold Φ_c,t from a quantile of the class's cosines.

GradSimCore (Eq. 5) needs a threshold Φ but the paper gives none. A fixed Φ is not
comparable across datasets, classes or epochs: gradient cosines concentrate differently as
training proceeds and as D grows. Φ_c,t = the q-quantile of the off-diagonal cosines
{cos(g_i, g_j): i < j in class c} at checkpoint t is scale-free: every sample's count is then
"how many of its class-mates are among the (1-q) most similar pairs", and the mean count is
(1-q)(n_c-1) at every checkpoint, so summing over checkpoints weighs them equally.

Exact when the class has at most ``max_pairs`` pairs (all i < j pairs from the float32 Gram
blocks); otherwise from ``max_pairs`` pairs drawn uniformly (with replacement, i ≠ j) with
``numpy.random.default_rng(seed)``; the rank error of the estimate is about
sqrt(q(1-q)/max_pairs) (0.015 percentage points for q = 0.9 at the default). Linear interpolation
between order statistics (numpy's default) is used in both cases.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from coreset.similarity.factors import ArrayLike
from coreset.similarity.gram import cosine_blocks, count_blocks

MAX_PAIRS = 1 << 22
PAIR_BLOCK_FLOATS = 1 << 24  # a Gram row block of the sampled path: 64 MiB of float32


def _upper_triangle(blocks: Iterable[tuple[int, torch.Tensor]]) -> np.ndarray:
    """The i < j entries of a matrix given as row blocks."""
    parts = []
    for start, cos in blocks:
        rows, cols = torch.triu_indices(cos.shape[0], cos.shape[1], offset=start + 1, device=cos.device)
        parts.append(cos[rows, cols].cpu().numpy())
    return np.concatenate(parts)


def _quantile(cos: np.ndarray, q: float) -> float:
    return float(np.clip(np.quantile(cos.astype(np.float64), q), -1.0, 1.0))


def _sampled_pair_cosines(err: ArrayLike, emb: ArrayLike, n_pairs: int, seed: int) -> np.ndarray:
    """The cosines of ``n_pairs`` pairs drawn uniformly (i ≠ j), read off the class's Gram row
    blocks: n²·(C+D+1) multiply-adds in matrix products, as one counting pass costs. Gathering
    each pair's factor rows instead moved 2·n_pairs·(C+D+1) floats through memory: at CIFAR's
    class shape (4,500 rows, C=10, D=512, 2^22 pairs, one thread) 56 s a checkpoint, this 2.1 s."""
    n = err.shape[0]
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # uniform over j ≠ i
    order = np.argsort(i, kind="stable")
    rows, cols = i[order], j[order]
    out = np.empty(n_pairs, dtype=np.float32)
    for start, cos in cosine_blocks(err, emb, block_size=max(1, PAIR_BLOCK_FLOATS // n)):
        lo, hi = np.searchsorted(rows, [start, start + cos.shape[0]])
        picked = cos[torch.from_numpy(rows[lo:hi] - start), torch.from_numpy(cols[lo:hi])]
        out[order[lo:hi]] = picked.cpu().numpy()
    return out


def quantile_threshold(err: ArrayLike, emb: ArrayLike, q: float, max_pairs: int = MAX_PAIRS, seed: int = 0) -> float:
    """Φ = the q-quantile of the off-diagonal cosines of one class at one checkpoint."""
    _check_quantile(q)
    n = err.shape[0]
    if n < 2:
        return 1.0  # no pairs: nothing can exceed Φ = 1, every count is 0
    if n * (n - 1) // 2 <= max_pairs:
        return _quantile(_upper_triangle(cosine_blocks(err, emb)), q)
    return _quantile(_sampled_pair_cosines(err, emb, max_pairs, seed), q)


def count_at_quantile(err: ArrayLike, emb: ArrayLike, q: float, **gram_options: object) -> tuple[np.ndarray, float]:
    """Exact Φ_q and the Gram counts above it from one Gram pass instead of two.

    Holds the whole n×n class matrix, so callers use it only where the exact rule applies
    (n(n-1)/2 ≤ max_pairs); Φ is bit-identical to ``quantile_threshold``'s exact path.
    """
    _check_quantile(q)
    n = err.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64), 1.0
    blocks = list(cosine_blocks(err, emb, **gram_options))
    phi = _quantile(_upper_triangle(blocks), q)
    return count_blocks(blocks, phi, n), phi


def _check_quantile(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"threshold_quantile must lie in [0, 1], got {q}")
