"""FAISS range-search backend for GradSimCore counts (the product's "FAISS stage").

Indexes the explicit normalised last-layer gradients g_i/|g_i| (C·(D+1) dims) in an exact
inner-product index and range-searches every sample of the class against it, which is the
paper's radius-neighbour formulation (Sec. 4.2) with FAISS instead of scikit-learn.

Semantics checked against the installed FAISS 1.15: ``IndexFlatIP.range_search(x, r)``
returns inner products strictly greater than r (float32), and
``faiss.contrib.exhaustive_search.range_search_gpu`` keeps the same rule (k-NN on the GPU,
CPU range search for queries with more than ``gpu_k`` hits). We pass the largest float32 ≤ Φ
so the float32 comparison means "> Φ" exactly. Self matches are removed by index, not by
value, so a zero gradient (cosine 0 with itself) is handled like any other sample.
"""
from __future__ import annotations

import faiss
import numpy as np
import torch
from faiss.contrib.exhaustive_search import range_search_gpu

from coreset.similarity.factors import ArrayLike, check_factors, float32_floor, unit_gradients

MAX_RESULTS_PER_CHUNK = 1 << 24  # bounds the (distance, label) buffers of one query chunk to ~200 MB
GPU_K = 1024


def _count_chunk(lims: np.ndarray, labels: np.ndarray, start: int) -> np.ndarray:
    """Hits per query minus the query's own index among its hits."""
    hits = np.diff(lims).astype(np.int64)
    query = np.repeat(np.arange(start, start + len(hits)), hits)
    own = np.bincount(query[labels == query] - start, minlength=len(hits))
    return hits - own


def count_similar(
    err: ArrayLike,
    emb: ArrayLike,
    threshold: float,
    use_gpu: bool | None = None,
    max_results_per_chunk: int = MAX_RESULTS_PER_CHUNK,
) -> np.ndarray:
    """For each i, the number of j ≠ i with cos(g_i, g_j) > Φ (strictly), via FAISS.

    ``use_gpu=None`` uses the GPU when ``faiss.get_num_gpus() > 0``. Queries are processed
    in chunks of ``max_results_per_chunk // n`` so result buffers stay bounded even when Φ is
    low and every pair matches; the explicit vectors themselves take n·C·(D+1) floats.
    """
    check_factors(err, emb, threshold)
    x = np.ascontiguousarray(unit_gradients(err, emb, torch.float32).numpy())
    n, d = x.shape
    radius = float32_floor(threshold)
    index = faiss.IndexFlatIP(d)
    index.add(x)
    if use_gpu is None:
        use_gpu = faiss.get_num_gpus() > 0
    if use_gpu:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
    chunk = max(1, max_results_per_chunk // max(n, 1))
    counts = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        xq = x[start : start + chunk]
        if use_gpu:
            lims, _, labels = range_search_gpu(xq, radius, gpu_index, index, gpu_k=GPU_K)
        else:
            lims, _, labels = index.range_search(xq, radius)
        counts[start : start + len(xq)] = _count_chunk(lims, labels, start)
    return counts
