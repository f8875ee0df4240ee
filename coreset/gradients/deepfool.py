"""DeepFool (Moosavi-Dezfooli et al. 2016): the smallest input perturbation, found by
linearising the classifier, that changes its prediction; batched, on any device.

From the image x_0 with predicted class k_0, each iteration linearises the logits f at the
current point x_i: for every other candidate class k, w_k = ∇f_k(x_i) − ∇f_{k_0}(x_i) and
f'_k = f_k(x_i) − f_{k_0}(x_i); the nearest linearised boundary is l = argmin_k |f'_k|/‖w_k‖₂,
and the step r_i = |f'_l|/‖w_l‖₂² · w_l reaches it. The steps add up to r = Σ r_i; the next
point is x_0 + (1 + overshoot)·r (the authors' code: an ``overshoot`` of 0.02 pushes past a
boundary the linearisation lands exactly on), until the prediction is no longer k_0 or after
``max_iter`` steps. The perturbation's size is (1 + overshoot)·‖r‖₂.

``candidates`` limits the classes tested to the top-scoring ones at x_0 (the authors' code
tests 10: an iteration costs one backward pass per candidate, 1000 at ImageNet otherwise);
0 tests every class, as DeepCore does. Rows are independent (the model in eval mode), so a
batch is attacked at once: per-sample input gradients of a class are the gradient of that
class's summed logits. Rows whose prediction has changed leave the batch. Pure torch, in the
model's precision (no autocast: the linearisation is the method).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from coreset.gradients.hooks import frozen_parameters
from coreset.models.base import Classifier


@dataclass
class Perturbation:
    """Per row: the perturbation's l2 size, the DeepFool steps taken, and whether the last
    point's prediction differs from the original one (False: ``max_iter`` ran out)."""

    size: torch.Tensor
    iterations: torch.Tensor
    flipped: torch.Tensor


def candidate_classes(logits: torch.Tensor, candidates: int) -> torch.Tensor:
    """(B, K) classes tested per row, the predicted class first, then the highest logits."""
    n_classes = logits.shape[1]
    k = n_classes if candidates == 0 else min(candidates, n_classes)
    ranked = logits.detach().clone()
    ranked[torch.arange(len(ranked), device=ranked.device), ranked.argmax(1)] = float("inf")
    return ranked.topk(k, dim=1).indices


def nearest_boundary_step(model: Classifier, x: torch.Tensor, classes: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The DeepFool step r_i of every row of ``x`` (classes[:, 0] the original prediction), and
    the logits at ``x``. Each w_k is one backward pass of f_k − f_{k_0} (K − 1 passes for K
    candidates, not K); keeps two input-sized tensors, not one per candidate."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    picked = logits.gather(1, classes)  # (B, K)
    last = classes.shape[1] - 1
    step = torch.zeros_like(x).flatten(1)
    best = torch.full((len(x),), float("inf"), dtype=step.dtype, device=x.device)
    for j in range(1, last + 1):
        gap = picked[:, j] - picked[:, 0]
        w = torch.autograd.grad(gap.sum(), x, retain_graph=j < last)[0].flatten(1)
        gap = gap.detach().abs()
        norm = w.norm(dim=1)
        distance = torch.where(norm > 0, gap / norm, torch.full_like(gap, float("inf")))
        nearer = distance < best  # ties keep the earlier (higher-scoring) class
        best = torch.where(nearer, distance, best)
        scale = torch.where(norm > 0, gap / norm.square().clamp_min(torch.finfo(norm.dtype).tiny), 0.0)
        step = torch.where(nearer[:, None], scale[:, None] * w, step)
    return step.view_as(x), logits.detach()


@torch.no_grad()
def deepfool(model: Classifier, x: torch.Tensor, max_iter: int = 50, overshoot: float = 0.02,
             candidates: int = 10) -> Perturbation:
    """DeepFool on every row of ``x`` (see the module docstring); the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with frozen_parameters(model), torch.autocast(x.device.type, enabled=False):
            return _attack(model, x if x.is_floating_point() else x.float(), max_iter, overshoot, candidates)
    finally:
        model.train(was_training)


def _attack(model: Classifier, x0: torch.Tensor, max_iter: int, overshoot: float, candidates: int) -> Perturbation:
    n = len(x0)
    total = torch.zeros_like(x0)
    iterations = torch.zeros(n, dtype=torch.int64, device=x0.device)
    flipped = torch.zeros(n, dtype=torch.bool, device=x0.device)
    classes = candidate_classes(model(x0), candidates)
    active = torch.arange(n, device=x0.device)
    for it in range(max_iter + 1):
        point = x0[active] + (1.0 + overshoot) * total[active]
        if it == max_iter:  # the last step's prediction only
            flipped[active] = model(point).argmax(1) != classes[active, 0]
            break
        with torch.enable_grad():
            step, logits = nearest_boundary_step(model, point, classes[active])
        moved = logits.argmax(1) != classes[active, 0]
        flipped[active[moved]] = True
        keep = ~moved
        active, step = active[keep], step[keep]
        if len(active) == 0:
            break
        total[active] += step
        iterations[active] += 1
    size = (1.0 + overshoot) * total.flatten(1).norm(dim=1)
    return Perturbation(size=size, iterations=iterations, flipped=flipped)
