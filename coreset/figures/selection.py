"""What the selection stage chose: GradSimCore's thresholds, each subset's classes, and how
alike each subset's images are.

GradSimCore (Eq. 5) counts class-mates whose gradient cosine exceeds Φ; this study sets Φ per
class and checkpoint from a quantile (``coreset.similarity.threshold``), so the figure shows
how Φ moves as training proceeds. The class composition of each method's subset is the
per-class view of the gradient-magnitude paper's Fig. 7: GradSimCore is balanced by
construction, Max-Gradient need not be. The subset diagnostics
(:mod:`coreset.stages.subset_diagnostics`) say whether a subset's images of a class are more
alike than a random subset's (redundant) and how many are near-copies of another.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from coreset.figures.canvas import Rendered, colours, finite, legend, line_styles, panels, percent_axis, require, save

LEGEND_CLASSES, TICK_CLASSES = 10, 20


def thresholds(gradsim_thresholds: pd.DataFrame, path: str | Path) -> Rendered:
    """Φ_c,t per class c (one line each) over the checkpoints t, and each class's size n.

    With more than LEGEND_CLASSES classes the lines are grey and the median over classes is
    drawn on top instead of a legend. ``data``: Φ as a label × epoch table.
    """
    require(gradsim_thresholds, ("epoch", "label", "threshold", "n"), "gradsim_thresholds")
    table = finite(gradsim_thresholds, "threshold")
    if table.duplicated(["label", "epoch"]).any():
        raise ValueError("gradsim_thresholds has several rows for one (label, epoch)")
    phi = table.pivot(index="label", columns="epoch", values="threshold").sort_index().sort_index(axis=1)
    fig, axes = panels(2 if len(phi) else 0, width=5.2, height=3.8)
    ax, sizes = axes
    few = len(phi) <= LEGEND_CLASSES
    colour = colours([str(c) for c in phi.index])
    for label, row in phi.iterrows():
        ax.plot(phi.columns, row, marker="o", ms=3, lw=1 if few else 0.6,
                color=colour[str(label)] if few else "0.7", label=f"class {label}" if few else None)
    if not few:
        ax.plot(phi.columns, phi.median(), color="black", lw=2, label=f"median of {len(phi)} classes")
    ax.set_xlabel("checkpoint (epoch)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("similarity threshold Φ (cosine)")
    ax.set_title("GradSimCore Φ per class and checkpoint")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2, loc="best")
    last = table[table["epoch"] == table["epoch"].max()].sort_values("label")
    positions = np.arange(len(last))  # numbers, not label strings: matplotlib logs about categorical units
    sizes.bar(positions, last["n"], color="tab:blue")
    sizes.set_xlabel("class")
    sizes.set_ylabel("samples n")
    sizes.set_title(f"class sizes at epoch {table['epoch'].max()}")
    sizes.set_xticks(positions if few else [], last["label"].astype(str).tolist() if few else [])
    return save(fig, path, phi)


def composition(subsets: pd.DataFrame, split_labels: pd.DataFrame) -> pd.DataFrame:
    """Images per class in each (method, fraction) subset, mean and std over seeds.

    Every class of ``split_labels`` appears, with 0 where a subset holds none of it.
    """
    require(subsets, ("method", "fraction", "seed", "sample_id"), "subsets")
    require(split_labels, ("sample_id", "label"), "split_labels")
    labels = split_labels.drop_duplicates("sample_id").set_index("sample_id")["label"]
    unknown = np.setdiff1d(subsets["sample_id"].unique(), labels.index)
    if unknown.size:
        raise ValueError(f"{unknown.size} subset sample_ids have no label, e.g. {unknown[:5].tolist()}")
    counts = (subsets.assign(label=labels.loc[subsets["sample_id"]].to_numpy())
              .groupby(["method", "fraction", "seed", "label"]).size().unstack("label", fill_value=0)
              .reindex(columns=np.sort(labels.unique()), fill_value=0).stack().rename("count").reset_index())
    g = counts.groupby(["fraction", "method", "label"])["count"]
    out = g.agg(count="mean", std="std", seeds="size").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def subset_composition(subsets: pd.DataFrame, split_labels: pd.DataFrame, path: str | Path,
                       class_names: Sequence[str] | None = None) -> Rendered:
    """Images per class of each method's subset, one heatmap panel per fraction: a row per
    method, a column per class, coloured by the mean count over seeds relative to a
    perfectly balanced subset of the same size (log2: white is balanced, red over, blue
    under), the mean count written in each cell while the classes are few. A row per method
    stays readable for two dozen methods, where grouped bars did not.

    ``split_labels`` maps ``sample_id`` to ``label`` (``split.parquet``); ``class_names``
    (indexed by label) name the columns. Beyond TICK_CLASSES classes the columns go unnamed.
    ``data`` is :func:`composition`.
    """
    table = composition(subsets, split_labels)
    if class_names is not None and len(table) and len(class_names) <= table["label"].max():
        raise ValueError(f"class_names has {len(class_names)} names but labels go up to {table['label'].max()}")
    fractions = sorted(table["fraction"].unique())
    methods = sorted(table["method"].unique())
    fig, axes = panels(len(fractions), width=6.0, height=1.4 + 0.28 * len(methods))
    for ax, fraction in zip(axes, fractions, strict=False):
        rows = table[table["fraction"] == fraction]
        counts = rows.pivot(index="method", columns="label", values="count").reindex(methods)
        balanced = counts.sum(axis=1).mean() / counts.shape[1]
        ratio = np.log2(np.clip(counts.to_numpy(dtype=float), 0.5, None) / balanced)
        image = ax.imshow(np.ma.masked_invalid(ratio), cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto",
                          interpolation="nearest")
        if counts.shape[1] <= TICK_CLASSES:
            for (i, j), value in np.ndenumerate(counts.to_numpy(dtype=float)):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6)
            named = class_names is not None
            names = [str(class_names[c]) if named else str(c) for c in counts.columns]
            ax.set_xticks(np.arange(counts.shape[1]), names, rotation=45 if named else 0,
                          ha="right" if named else "center", fontsize="small")
        else:
            ax.set_xticks([])
        ax.set_yticks(np.arange(len(methods)), methods, fontsize="small")
        ax.set_title(f"fraction {fraction:g} (~{balanced * counts.shape[1]:.0f} images)")
        fig.colorbar(image, ax=ax, label="log2(images / balanced share)", shrink=0.8)
    return save(fig, path, table)


DIAGNOSTICS = ("method", "fraction", "seed", "label", "compared", "mean_cosine", "near_duplicates")


def diagnostics_summary(diagnostics: pd.DataFrame, reference: str = "random") -> pd.DataFrame:
    """Per method and fraction, means over seeds of: ``mean_cosine``, the mean last-layer
    gradient cosine over all within-class pairs of compared images (classes weighted by their
    pairs); ``cosine_minus_reference``, its *difference* from ``reference``'s at the same fraction
    (a difference, not a ratio: cosines near 0 or negative make ratios meaningless; NaN where
    the reference has no subset); and ``near_duplicate_share``, near-duplicates over compared images."""
    require(diagnostics, DIAGNOSTICS, "subset_diagnostics")
    pairs = diagnostics["compared"] * (diagnostics["compared"] - 1) / 2
    rows = diagnostics.assign(pairs=pairs, weighted=(pairs * diagnostics["mean_cosine"]).where(pairs > 0, 0.0))
    subsets = rows.groupby(["method", "fraction", "seed"])[["pairs", "weighted", "near_duplicates", "compared"]].sum()
    per_seed = pd.DataFrame({
        "mean_cosine": subsets["weighted"] / subsets["pairs"].where(subsets["pairs"] > 0),
        "near_duplicate_share": subsets["near_duplicates"] / subsets["compared"].where(subsets["compared"] > 0),
    }).reset_index()
    out = per_seed.groupby(["method", "fraction"]).agg(
        mean_cosine=("mean_cosine", "mean"), near_duplicate_share=("near_duplicate_share", "mean"),
        seeds=("seed", "size")).reset_index()
    base = out[out["method"] == reference].set_index("fraction")["mean_cosine"]
    out["reference_cosine"] = out["fraction"].map(base)
    out["cosine_minus_reference"] = out["mean_cosine"] - out["reference_cosine"]
    return out


def subset_diagnostics(diagnostics: pd.DataFrame, path: str | Path, reference: str = "random") -> Rendered:
    """Two panels against the fraction kept (log x), a line per method: the within-class gradient
    cosine minus ``reference``'s at the same fraction (above 0: more alike than chance, below:
    more diverse; the reference is the dashed zero line), and the share of compared images that
    have a near-duplicate in their subset and class. ``data`` is :func:`diagnostics_summary`.
    """
    table = diagnostics_summary(diagnostics, reference)
    if len(table) and reference not in set(table["method"]):
        raise ValueError(f"subset_diagnostics needs the {reference!r} subsets: the cosine is drawn against theirs")
    if (pd.to_numeric(table["fraction"]) <= 0).any():
        raise ValueError("subset_diagnostics fractions must be > 0 (the x axis is logarithmic)")
    fig, (cosine, share) = panels(2 if len(table) else 0)
    style = line_styles(list(table["method"].unique()))
    for method, curve in table.groupby("method"):
        curve = curve.sort_values("fraction")
        if method != reference:
            cosine.plot(curve["fraction"], curve["cosine_minus_reference"], marker="o", ms=3, label=method,
                        **style[method])
        share.plot(curve["fraction"], 100 * curve["near_duplicate_share"], marker="o", ms=3, label=method,
                   **style[method])
    cosine.axhline(0.0, color="black", ls="--", lw=1.5, label=reference)
    cosine.set_ylabel(f"within-class gradient cosine − {reference}'s")
    cosine.set_title(f"Alike (> 0) or diverse (< 0) against {reference}")
    share.set_ylabel("images with a near-duplicate (%)")
    share.set_title("Near-duplicates within subset and class")
    for ax in (cosine, share):
        percent_axis(ax)
        ax.set_xlabel("subset size (share of the training set)")
        ax.grid(True, which="both", alpha=0.3)
    legend(fig, share, loc="upper right")
    return save(fig, path, table)
