"""Choosing a GradSimCore counting backend by problem size.

Cost per class and checkpoint: the Gram backend does n²·(C+D+1) multiply-adds in
O(block·n) memory; FAISS flat range search does n²·C·(D+1) on explicit vectors that take
n·C·(D+1) floats (2.7 GB for one ImageNet class). Since C·(D+1) ≥ C+D+1 for every C ≥ 1,
the Gram form never does more arithmetic. Measured on 2 CPU cores (torch 2.15, FAISS 1.15,
Φ = 0.5, includes building vectors/factors):

    n      C    D     gram     faiss
    1000   10   64    0.006 s  0.009 s
    1000   10   512   0.013 s  0.077 s
    5000   10   512   0.46 s   1.70 s
    1000   100  512   0.011 s  1.02 s
    2000   2    16    0.040 s  0.046 s

(timings on a shared 2-core machine, before counting moved to the upper triangle with
512-row blocks, which made the CIFAR-10 shape 0.13 s per class, 14x scikit-learn;
``benchmarks/gradsim.py`` reproduces the CIFAR-10 and ImageNet shapes), so ``auto`` is the
Gram backend everywhere, on the GPU when torch sees one and the class is large enough
(≥ 1 GFLOP) for the transfer to pay off (not yet measured). FAISS stays available by name:
it is the paper's radius-neighbour formulation and the route to approximate indexes later.
"""
from __future__ import annotations

import torch

GPU_MIN_FLOPS = 1e9


def choose_backend(n: int, n_classes: int, emb_dim: int) -> tuple[str, dict[str, object]]:
    """(backend name, options) for one class of n samples with err (n, C) and emb (n, D)."""
    flops = 2.0 * n * n * (n_classes + emb_dim + 1)
    device = "cuda" if torch.cuda.is_available() and flops >= GPU_MIN_FLOPS else "cpu"
    return "gram", {"device": device}
