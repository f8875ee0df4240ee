"""Per-sample norms from materialised per-sample gradients, in memory-bounded chunks.

l1 and linf do not factor through Gram matrices the way l2 does, so they need the
per-sample gradient itself. The engine materialises a layer's per-sample weight
gradients ``dW_i`` (``per_layer.py`` says how per layer type) for a sub-batch at a time,
sized by :func:`chunks` so one chunk's scratch memory stays under the spec's byte
budget, reduces them to the requested norms with :func:`tensor_norms` and drops them.
The same path is the cheaper way to get l2 when ``T·(k + c) > k·c`` (``ghost.py``).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class NormParts:
    """Per-sample (B,) contributions of some parameters: squared l2, l1 and linf (None if not asked)."""

    sq: torch.Tensor | None = None
    l1: torch.Tensor | None = None
    linf: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list[NormParts]) -> NormParts:
        """Concatenate the chunks of one batch."""
        def join(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return NormParts(join("sq"), join("l1"), join("linf"))


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the accumulation precision: float32, or float64 for float64 models."""
    return t if t.dtype == torch.float64 else t.float()


def tensor_norms(t: torch.Tensor, norms: frozenset[str]) -> NormParts:
    """Norms of each ``t[i]`` (a per-sample gradient, any shape), in float32 (float64 stays)."""
    flat = wide(t.reshape(t.shape[0], -1))
    return NormParts(
        sq=torch.linalg.vector_norm(flat, 2, dim=1).square() if "l2" in norms else None,
        l1=torch.linalg.vector_norm(flat, 1, dim=1) if "l1" in norms else None,
        linf=torch.linalg.vector_norm(flat, math.inf, dim=1) if "linf" in norms else None,
    )


def chunks(batch: int, per_sample_bytes: int, chunk_bytes: int) -> Iterator[slice]:
    """Sub-batch slices of at least one sample, each within ``chunk_bytes`` of scratch."""
    step = max(1, chunk_bytes // max(1, per_sample_bytes))
    for start in range(0, batch, step):
        yield slice(start, min(batch, start + step))
