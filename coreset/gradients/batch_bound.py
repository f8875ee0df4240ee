"""The paper's Figure 1 quantity: how tight the triangle bound on one SGD step is.

An SGD step moves the parameters by ``η/|B| · ||Σ_i ∇L_i||`` which is bounded by
``η/|B| · Σ_i ||∇L_i||``. :func:`batch_bound` returns both sums (without the common
``η/|B|`` factor) for one minibatch, per parameter group and norm: the left one from an
ordinary backward of the summed loss, the right one from the per-sample engine. Both
use the model in eval mode (see ``engine.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from coreset.gradients.engine import PerSampleGradients
from coreset.gradients.hooks import trainable_layers
from coreset.gradients.spec import GROUPS, GradientSpec
from coreset.models.base import Classifier


def batch_bound(
    model: Classifier, x: torch.Tensor, y: torch.Tensor,
    groups: tuple[str, ...] = GROUPS, norms: tuple[str, ...] = ("l2",),
) -> dict[str, float]:
    """``{"<norm>_<group>_norm_of_sum": ||Σ_i g_i||, "<norm>_<group>_sum_of_norms": Σ_i ||g_i||}``."""
    spec = GradientSpec(norms=norms, groups=groups, factors=False)
    per_sample = PerSampleGradients(model, spec).compute(x, y)
    params = _group_params(model, groups)
    flat = list(dict.fromkeys(p for ps in params.values() for p in ps))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(model(x).float(), y, reduction="sum")
            grads = dict(zip(flat, torch.autograd.grad(loss, flat), strict=False))
    finally:
        model.train(was_training)
    out: dict[str, float] = {}
    for col in spec.columns:
        norm, group = col.split("_", 1)
        out[f"{col}_norm_of_sum"] = _norm([grads[p] for p in params[group]], norm)
        out[f"{col}_sum_of_norms"] = per_sample[col].sum().item()
    return out


def _group_params(model: Classifier, groups: tuple[str, ...]) -> dict[str, list[torch.nn.Parameter]]:
    head = [p for p in (model.head.weight, model.head.bias) if p is not None]
    layers = trainable_layers(model) if any(g != "last" for g in groups) else []
    weights = [layer.module.weight for layer in layers if layer.weight]
    biases = [layer.module.bias for layer in layers if layer.bias]
    return {"last": head, "weights": weights, "biases": biases, "all": weights + biases}


def _norm(tensors: list[torch.Tensor], norm: str) -> float:
    if not tensors:
        return 0.0
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    return torch.linalg.vector_norm(flat, {"l1": 1, "l2": 2, "linf": math.inf}[norm]).item()
