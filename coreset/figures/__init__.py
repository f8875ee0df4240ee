"""The papers' figures from a study's tables: pure functions, pandas in, one PNG out.

No Ray and no study root: the caller reads the tables (README, "Query the results") and
passes DataFrames; each function writes one PNG and returns :class:`Rendered`, the path and
the numbers drawn. Modules by family: ``accuracy`` (grad-mag Figs. 3, 8, 9), ``magnitude``
(Figs. 1, 2, 5), ``rankings`` (Figs. 6, 7, 12), ``selection`` (GradSimCore's Φ, subset
classes and diagnostics) and ``images`` (Figs. 4, 10, 11 and GradSimCore's best/worst-ranked images).
"""
from __future__ import annotations

from coreset.figures.accuracy import accuracy_vs_fraction, source_spread
from coreset.figures.canvas import Rendered
from coreset.figures.images import image_grid, percentile_rows
from coreset.figures.magnitude import batch_bound, trajectory_heatmap
from coreset.figures.rankings import label_entropy, topk_overlap
from coreset.figures.selection import subset_composition, subset_diagnostics, thresholds

__all__ = [
    "Rendered", "accuracy_vs_fraction", "batch_bound", "image_grid", "label_entropy", "percentile_rows",
    "source_spread", "subset_composition", "subset_diagnostics", "thresholds", "topk_overlap", "trajectory_heatmap",
]
