"""Per-sample l2 norms of weight gradients without materialising them ("ghost norm").

For a layer with per-sample weight gradient ``dW_i = G_i A_iᵀ`` (input patches ``A_i``
k×T, output gradients ``G_i`` c×T, T positions: 1 for a Linear on flat inputs, the
output pixels for a convolution),

    ||dW_i||² = Σ_{t,s} (A_iᵀA_i)_{ts} (G_iᵀG_i)_{ts}        (Goodfellow 2015; Li et al. 2022)

costs ~T²·(k + c) multiply-adds and 2·T² floats per sample, against ~T·k·c and k·c
for materialising ``dW_i`` (a grouped convolution weight-gradient, ``per_layer.py``).
:func:`prefers_gram` picks the smaller FLOP count per layer; both paths are chunked
under the same byte budget. Early high-resolution convolutions (large T) materialise;
late low-resolution ones and every Linear on flat inputs (T = 1, where the formula is
just ``|a_i|²·|g_i|²``) use the Gram form. On ResNet-18 at 32 px that is 64- and
128-channel stages materialised, 256 and 512 via Gram.
"""
from __future__ import annotations

import torch


def prefers_gram(k: int, c: int, t: int) -> bool:
    """Whether the Gram form is cheaper than materialising for this layer shape."""
    return t * (k + c) < k * c


def gram_sq_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``||G_i A_iᵀ||²`` per sample for ``a`` (b, …, k, T) and ``g`` (b, …, c, T); extra dims are summed."""
    aa = a.transpose(-1, -2) @ a
    gg = g.transpose(-1, -2) @ g
    return torch.einsum("bij,bij->b", aa.reshape(a.shape[0], -1, 1), gg.reshape(a.shape[0], -1, 1))
