"""Per-sample gradient quantities: losses, last-layer factors and gradient norms per sample.

``PerSampleGradients(model, GradientSpec(...)).compute(x, y)`` is the engine (see
``engine.py`` for how each column is computed); ``batch_bound`` is the paper's
Figure 1 quantity. Pure torch: no Ray, no FAISS.
"""
from coreset.gradients.batch_bound import batch_bound
from coreset.gradients.engine import PerSampleGradients
from coreset.gradients.hooks import trainable_layers
from coreset.gradients.last_layer import (
    NORMS,
    LastLayerFactors,
    error_vector,
    last_layer_factors,
    last_layer_norms,
)
from coreset.gradients.spec import GROUPS, GradientSpec

__all__ = [
    "GROUPS",
    "NORMS",
    "GradientSpec",
    "LastLayerFactors",
    "PerSampleGradients",
    "batch_bound",
    "error_vector",
    "last_layer_factors",
    "last_layer_norms",
    "trainable_layers",
]
