"""Test accuracy of models retrained on each method's subset, against the fraction kept.

The gradient-magnitude paper's Figs. 3 (MNIST), 8 (CIFAR-10/100) and 9 (ImageNet, one panel
per retrained architecture) and GradSimCore's Tables 2-6 as a curve: does a method's subset
approach the full-data model faster than random sampling does?
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from coreset.figures.canvas import Rendered, finite, legend, line_styles, panels, percent_axis, require, save

COLUMNS = ("method", "fraction", "seed", "target_model", "test_acc")
FULL = "full"


def summarise(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (0 for one seed) of test accuracy over seeds per target_model, method, fraction."""
    g = finite(accuracy, "test_acc").groupby(["target_model", "method", "fraction"])["test_acc"]
    out = g.agg(mean="mean", std="std", seeds="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def accuracy_vs_fraction(accuracy: pd.DataFrame, path: str | Path) -> Rendered:
    """Top-1 test accuracy (%) vs fraction of the training set (log x), mean ± std over seeds.

    One panel per ``target_model`` (Fig. 9 has one per retrained network); the full-data
    model (method ``"full"``, fraction 1.0) is the dashed horizontal line every subset
    curve is read against. Rows with a NaN ``test_acc`` (unfinished trials) are left out
    and a target with no finished trial gets no panel. ``data`` is :func:`summarise`.
    """
    require(accuracy, COLUMNS, "accuracy")
    if (pd.to_numeric(accuracy["fraction"]) <= 0).any():
        raise ValueError("accuracy fractions must be > 0 (the x axis is logarithmic)")
    summary = summarise(accuracy)
    targets = sorted(summary["target_model"].unique())
    fig, axes = panels(len(targets), sharey=True)
    style = line_styles([m for m in summary["method"].unique() if m != FULL])
    for ax, target in zip(axes, targets, strict=False):
        rows = summary[summary["target_model"] == target]
        for method, curve in rows[rows["method"] != FULL].groupby("method"):
            curve = curve.sort_values("fraction")
            x, mean, std = curve["fraction"], 100 * curve["mean"], 100 * curve["std"]
            ax.plot(x, mean, marker="o", ms=3, label=method, **style[method])
            ax.fill_between(x, mean - std, mean + std, color=style[method]["color"], alpha=0.15, lw=0)
        full = rows[rows["method"] == FULL]
        if len(full):
            mean, std = 100 * full["mean"].iloc[0], 100 * full["std"].iloc[0]
            ax.axhline(mean, color="black", ls="--", lw=1.5, label=f"full data ({mean:.1f}%)")
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, lw=0)
        percent_axis(ax)
        ax.set_title(f"retrained: {target}")
        ax.set_xlabel("subset size (share of the training set)")
        ax.grid(True, which="both", alpha=0.3)
    legend(fig, axes[0])
    axes[0].set_ylabel("top-1 test accuracy (%)")
    fig.suptitle("Test accuracy vs subset size (mean ± std over seeds)")
    return save(fig, path, summary)


def source_spread(spread: pd.DataFrame, path: str | Path) -> Rendered:
    """The two spreads of each method's accuracy against the fraction kept: over retraining
    seeds within one source model (left) and over source models (right), from
    :func:`coreset.analysis.source_spread`. One panel pair per target model is too many for a
    page; the first target model is drawn and the CSV holds them all."""
    require(spread, ("target_model", "method", "fraction", "retrain_std", "source_std"), "source spread")
    target = sorted(spread["target_model"].unique())[0]
    rows = spread[spread["target_model"] == target]
    fig, axes = panels(2, sharey=True)
    style = line_styles(list(rows["method"].unique()))
    for ax, column, title in zip(axes, ("retrain_std", "source_std"), ("over retraining seeds", "over source models"),
                                 strict=True):
        for method, curve in rows.groupby("method"):
            curve = curve.sort_values("fraction")
            ax.plot(curve["fraction"], 100 * curve[column], marker="o", ms=3, label=method, **style[method])
        ax.set_xscale("log")
        ax.set_title(f"std of test accuracy {title}")
        ax.set_xlabel("subset size (share of the training set)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("std (accuracy points)")
    legend(fig, axes[0], loc="upper right")
    fig.suptitle(f"Where the spread comes from (retrained: {target})")
    return save(fig, path, spread)
