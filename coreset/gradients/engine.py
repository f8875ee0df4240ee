"""The per-sample gradient engine: loss, correctness, last-layer factors and gradient norms.

Per-sample gradients are those of each sample's own cross-entropy loss with the model in
**eval mode**. Eval mode matters: BatchNorm then normalises with its running statistics,
so every sample's output depends on that sample alone and its gradient is well defined
(in train mode batch statistics couple the samples). ``compute`` switches the model to
eval and restores its mode afterwards.

How each column is obtained:

* ``<norm>_last``: closed form from the forward pass (``last_layer.py``);
* ``l2`` over weights/biases/all: one forward and one backward of the *summed* loss (in
  eval mode the gradient of the sum w.r.t. a layer's output, restricted to sample i, is
  sample i's own), with hooks turning each layer's input and output gradient into
  per-sample squared norms (``ghost.py``, ``per_layer.py``); parameter gradients are never
  formed;
* ``l1``/``linf`` over weights/biases/all: in the same pass, per layer, per-sample weight
  gradients are materialised in chunks under ``spec.chunk_bytes`` (``materialize.py``).

Across layers l2 combines as the root of summed squares, l1 as a sum, linf as a max.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from coreset.devices import autocast
from coreset.gradients.hooks import Layer, capture, frozen_parameters, trainable_layers
from coreset.gradients.last_layer import error_vector, last_layer_factors, last_layer_norms
from coreset.gradients.materialize import NormParts, wide
from coreset.gradients.per_layer import layer_norms
from coreset.gradients.spec import GradientSpec
from coreset.models.base import Classifier


class _Totals:
    """Per-sample norm accumulators for the weight and bias groups across layers."""

    def __init__(self, norms: frozenset[str], chunk_bytes: int) -> None:
        self.norms, self.chunk_bytes = norms, chunk_bytes
        self.parts: dict[str, NormParts] = {"weights": NormParts(), "biases": NormParts()}

    def add_layer(self, layer: Layer, x: torch.Tensor, g: torch.Tensor) -> None:
        with torch.no_grad():
            weight, bias = layer_norms(layer, x, g, self.norms, self.chunk_bytes)
            for group, part in (("weights", weight), ("biases", bias)):
                if part is not None:
                    self.parts[group] = _combine(self.parts[group], part)

    def columns(self, groups: tuple[str, ...], batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        zero = torch.zeros(batch, device=device)  # a group without parameters
        w, b = (self.parts[k] for k in ("weights", "biases"))
        out: dict[str, torch.Tensor] = {}
        for group in groups:
            if group == "last":
                continue
            sel = {"weights": [w], "biases": [b], "all": [w, b]}[group]
            part = NormParts()
            for p in sel:
                part = _combine(part, p)
            if "l2" in self.norms:
                out[f"l2_{group}"] = (part.sq if part.sq is not None else zero).sqrt()
            if "l1" in self.norms:
                out[f"l1_{group}"] = part.l1 if part.l1 is not None else zero
            if "linf" in self.norms:
                out[f"linf_{group}"] = part.linf if part.linf is not None else zero
        return out


def _combine(a: NormParts, b: NormParts) -> NormParts:
    def op(x: torch.Tensor | None, y: torch.Tensor | None,
           fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
        return y if x is None else x if y is None else fn(x, y)

    return NormParts(op(a.sq, b.sq, torch.add), op(a.l1, b.l1, torch.add), op(a.linf, b.linf, torch.maximum))


class PerSampleGradients:
    """Per-sample gradient quantities of ``model``; build once, call :meth:`compute` per batch.

    Supports models whose trainable parameters all sit in Linear, Conv2d and BatchNorm
    layers (raises ``ValueError`` naming the others at construction).
    """

    def __init__(self, model: Classifier, spec: GradientSpec | None = None) -> None:
        self.model, self.spec = model, spec or GradientSpec()
        self.layers = trainable_layers(model) if spec.needs_backward else []

    def columns(self) -> list[str]:
        """The norm column names :meth:`compute` produces."""
        return self.spec.columns

    def compute(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss``, ``correct`` (B,), ``err`` (B, C) and ``emb`` (B, D) if ``spec.factors``, every norm column (B,)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with autocast(x.device, self.spec.amp):
                out, err, emb = self._forward_backward(x, y) if self.spec.needs_backward else self._forward(x, y)
        finally:
            self.model.train(was_training)
        if "last" in self.spec.groups:
            out.update(last_layer_norms(err, emb, self.spec.norms))
        if self.spec.factors:
            out.update(err=err, emb=emb)
        return {k: out[k] for k in ["loss", "correct", *self.columns(), "err", "emb"] if k in out}

    def _forward(self, x: torch.Tensor, y: torch.Tensor):
        f = last_layer_factors(self.model, x, y)
        return {"loss": f.loss, "correct": f.correct}, f.err, f.emb

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor):
        totals = _Totals(frozenset(self.spec.norms), self.spec.chunk_bytes)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), frozen_parameters(self.model), capture(self.layers, totals.add_layer):
            logits, h = self.model.forward_with_features(x)
            logits = wide(logits)
            # float64 for the B×C softmax: for confident samples err_y = p_y - 1 cancels, and
            # float32 rounding there would be the largest error of every norm.
            loss = F.cross_entropy(logits.double(), y, reduction="none")
            with torch.autocast(x.device.type, enabled=False):
                torch.autograd.grad(loss.sum(), x)
        out = {"loss": loss.detach().to(logits.dtype), "correct": logits.argmax(1) == y}
        out.update(totals.columns(self.spec.groups, len(x), x.device))
        return out, error_vector(logits.detach(), y), wide(h.detach())
