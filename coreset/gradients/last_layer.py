"""Closed-form last-layer gradients of softmax cross-entropy, from one forward pass.

For logits ``z = W h + b`` and loss ``CE(z, y)``, the per-sample gradients are
``dW = err ⊗ h`` and ``db = err`` with ``err = softmax(z) - onehot(y)``. Their norms
over (W, b) therefore factor:

* l2:   ``|err|_2 * sqrt(|h|_2^2 + 1)``
* l1:   ``|err|_1 * (|h|_1 + 1)``
* linf: ``|err|_inf * max(|h|_inf, 1)``

and the cosine of two samples' last-layer gradients is
``cos(err_i, err_j) * cos([h_i; 1], [h_j; 1])`` (GradSimCore never needs the
C*(D+1)-dimensional vectors).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from coreset.models.base import Classifier

NORMS = ("l1", "l2", "linf")


@dataclass
class LastLayerFactors:
    """Per-sample forward quantities: loss, correctness, ``err`` (B, C) and ``emb`` = h (B, D)."""

    loss: torch.Tensor
    correct: torch.Tensor
    err: torch.Tensor
    emb: torch.Tensor


def error_vector(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``softmax(logits) - onehot(labels)`` in float32, computed in float64.

    For a confident sample ``p_y - 1`` cancels; float32 there loses most of its digits.
    """
    err = torch.softmax(logits.double(), dim=1)
    err[torch.arange(len(labels), device=err.device), labels] -= 1.0
    return err.float()


@torch.no_grad()
def last_layer_factors(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> LastLayerFactors:
    """One forward pass in the model's current mode; returns the last-layer factors."""
    logits, h = model.forward_with_features(x)
    logits = logits.float()
    return LastLayerFactors(
        loss=F.cross_entropy(logits, y, reduction="none"),
        correct=logits.argmax(1) == y,
        err=error_vector(logits, y),
        emb=h.float(),
    )


def last_layer_norms(err: torch.Tensor, emb: torch.Tensor, norms: tuple[str, ...] = NORMS) -> dict[str, torch.Tensor]:
    """Per-sample norms of the (weight, bias) gradient of the final linear layer.

    Returns ``{"<norm>_last": tensor (B,)}`` for each requested norm.
    """
    out: dict[str, torch.Tensor] = {}
    for norm in norms:
        if norm == "l2":
            out["l2_last"] = err.norm(dim=1) * torch.sqrt(emb.pow(2).sum(1) + 1.0)
        elif norm == "l1":
            out["l1_last"] = err.abs().sum(1) * (emb.abs().sum(1) + 1.0)
        elif norm == "linf":
            out["linf_last"] = err.abs().amax(1) * torch.clamp(emb.abs().amax(1), min=1.0)
        else:
            raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
    return out
