"""Last-layer gradient factors shared by all GradSimCore counting backends.

The last-layer gradient of sample i is ``g_i = err_i ⊗ [h_i; 1]`` (weights and bias), so

    cos(g_i, g_j) = cos(err_i, err_j) * cos([h_i; 1], [h_j; 1]).

Convention for zero gradients: a sample whose ``err`` is all zero (a perfectly confident
correct prediction after float16 rounding) has no direction; we define its cosine with
every sample (itself included) as 0. Normalising its row to the zero vector gives exactly
that in every backend. ``[h; 1]`` is never zero, so only ``err`` can cause this.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

ArrayLike = np.ndarray | torch.Tensor


def stack_list_column(column: pd.Series | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Turn a list column (``err`` or ``emb``) into an (N, width) array, keeping its float dtype.

    Arrow fixed-size lists are flattened without a Python loop; a pandas object column of
    per-row arrays (what ``read_parquet`` gives) is concatenated once and reshaped.
    """
    if isinstance(column, pd.Series) and isinstance(column.dtype, pd.ArrowDtype):
        column = pa.chunked_array(column.array._pa_array)  # noqa: SLF001 (pandas has no public accessor)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, pa.Array):
        if len(column) == 0:
            raise ValueError("cannot stack an empty list column")
        width = len(column[0])
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(column), width)
    rows = column.to_numpy() if isinstance(column, pd.Series) else np.asarray(column, dtype=object)
    if len(rows) == 0:
        raise ValueError("cannot stack an empty list column")
    width = len(rows[0])
    flat = np.concatenate(rows)
    if flat.size != len(rows) * width:
        raise ValueError(f"list column rows differ in length (first row has {width} values)")
    return flat.reshape(len(rows), width)


def as_tensor(x: ArrayLike, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.Tensor:
    """A 2-D tensor of ``dtype`` on ``device`` (float16 inputs are upcast exactly)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:  # a zero-copy view of Arrow's buffer
        x = np.array(x, dtype=torch.empty(0, dtype=dtype).numpy().dtype)  # the cast copies anyway
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype)


def check_factors(err: ArrayLike, emb: ArrayLike, threshold: float) -> None:
    """Validate shapes and Φ once, so every backend fails the same way."""
    if err.ndim != 2 or emb.ndim != 2 or err.shape[0] != emb.shape[0]:
        raise ValueError(f"err (n, C) and emb (n, D) must share n; got {tuple(err.shape)} and {tuple(emb.shape)}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"similarity threshold Φ must lie in [-1, 1], got {threshold}")


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their l2 norm; zero rows stay zero (cosine 0 with everything)."""
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(x))


def unit_factors(err: ArrayLike, emb: ArrayLike, dtype: torch.dtype,
                 device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(Ê, Ĥ): row-normalised ``err`` and row-normalised ``[h; 1]``."""
    e = as_tensor(err, dtype, device)
    h = as_tensor(emb, dtype, device)
    h1 = torch.cat([h, torch.ones(len(h), 1, dtype=dtype, device=device)], dim=1)
    return unit_rows(e), unit_rows(h1)


def unit_gradients(err: ArrayLike, emb: ArrayLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Explicit normalised last-layer gradients ``g_i/|g_i|``, shape (n, C·(D+1)).

    Only for backends that need vectors (FAISS, brute force): this is C·(D+1) floats per
    sample, 2 GB per 1,000 samples at ImageNet shape. The outer product of two unit
    vectors is a unit vector, so no second normalisation is needed.
    """
    e, h1 = unit_factors(err, emb, dtype)
    return (e[:, :, None] * h1[:, None, :]).reshape(len(e), -1)


def float32_floor(threshold: float) -> float:
    """The largest float32 ≤ Φ.

    Float32 similarities s satisfy ``s > Φ`` (exactly, in real numbers) iff
    ``s > float32_floor(Φ)``; comparing against Φ rounded to nearest would misclassify
    an s equal to Φ rounded up.
    """
    t = np.float32(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, np.float32(-np.inf))
    return float(t)
