"""How a ranking's top-k looks: its label entropy and its overlap with another ranking.

The gradient-magnitude paper's Fig. 7 and 12 (entropy of the class labels of the top-k
against the uniform log C: a skewed top-k is what hurts Max-Gradient on CIFAR) and Fig. 6
(|S_a,k ∩ S_b,k| / k for two models against the random k/N: are hard images intrinsic to the
image or to the model?). The tables come from :mod:`coreset.analysis`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from coreset.figures.canvas import Rendered, colours, finite, legend, line_styles, panels, percent_axis, require, save

AXIS = {"fraction": "top-k as a share of the training set", "k": "k (top-k images)"}


def label_entropy(entropy: pd.DataFrame, num_classes: int, path: str | Path, x: str = "fraction") -> Rendered:
    """Figs. 7 and 12: class-label entropy (bits) of each ranking's top-k, against log2(C).

    ``entropy`` is ``analysis/label_entropy.parquet`` (``method`` names the ranking, the
    entropies are in bits as :func:`coreset.analysis.label_entropy_curve` writes them) or
    one such curve with a ``method`` column added; ``x`` is ``"fraction"`` or ``"k"``, drawn
    on a log axis. ``data``: the drawn ``method, <x>, entropy`` rows.
    """
    if x not in AXIS:
        raise ValueError(f"x must be one of {sorted(AXIS)}, got {x!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    require(entropy, ("method", x, "entropy"), "label_entropy")
    table = finite(entropy, "entropy").sort_values(["method", x])[["method", x, "entropy"]]
    fig, (ax,) = panels(1 if len(table) else 0, width=6.0, height=4.2)
    style = line_styles(list(table["method"].unique()))
    for method, curve in table.groupby("method"):
        ax.plot(curve[x], curve["entropy"], marker="o", ms=3, label=method, **style[method])
    baseline = float(np.log2(num_classes))
    ax.axhline(baseline, color="black", ls="--", lw=1, label=f"uniform labels: log2({num_classes}) = {baseline:.2f}")
    if x == "fraction":
        percent_axis(ax)
    else:
        ax.set_xscale("log")
    ax.set_ylim(0, baseline * 1.08 if baseline > 0 else 1)
    ax.set_xlabel(AXIS[x])
    ax.set_ylabel("label entropy of the top-k (bits)")
    ax.set_title("Class balance of each ranking's top-k")
    ax.grid(True, which="both", alpha=0.3)
    legend(fig, ax)
    return save(fig, path, table.reset_index(drop=True))


def topk_overlap(curve: pd.DataFrame, path: str | Path, label: str = "ranking a ∩ ranking b") -> Rendered:
    """Fig. 6: |S_a,k ∩ S_b,k| / k against k (log x), with the random-subsets baseline k/N.

    ``curve`` is :func:`coreset.analysis.topk_overlap_curve`'s output; several pairs go in one
    figure when the table has a ``pair`` column naming each (then ``label`` is unused).
    ``data``: the drawn ``pair, k, overlap, random_baseline`` rows.
    """
    require(curve, ("k", "overlap", "random_baseline"), "topk_overlap")
    table = finite(curve, "overlap")
    table = (table if "pair" in table.columns else table.assign(pair=label))
    table = table.sort_values(["pair", "k"])[["pair", "k", "overlap", "random_baseline"]].reset_index(drop=True)
    fig, (ax,) = panels(1 if len(table) else 0, width=6.0, height=4.2)
    colour = colours(list(table["pair"].unique()))
    for pair, rows in table.groupby("pair"):
        ax.plot(rows["k"], rows["overlap"], marker="o", ms=3, color=colour[pair], label=pair)
    base = table.drop_duplicates("k")
    ax.plot(base["k"], base["random_baseline"], color="black", ls="--", lw=1, label="random ∩ random (k/N)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (top-k images)")
    ax.set_ylabel("overlap |S_a,k ∩ S_b,k| / k")
    ax.set_title("Agreement of two gradient rankings")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return save(fig, path, table)
