"""Gradient-magnitude diagnostics: is the triangle bound a fair ordering, and how do the
magnitudes evolve while the source model trains?

The gradient-magnitude paper's Fig. 1 (||Σ∇L_i|| against Σ||∇L_i|| over random minibatches)
and Figs. 2 and 5 (heatmap of −log ||∇L_i|| of probe images over the epochs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator

from coreset.figures.canvas import Rendered, finite, panels, require, save

BOUND_COLUMNS = ("batch", "epoch", "batch_size", "column", "norm_of_sum", "sum_of_norms")


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r, NaN when it is undefined (fewer than two points or a constant side)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def batch_bound(batch_bound: pd.DataFrame, path: str | Path) -> Rendered:
    """Fig. 1: ||Σ_i ∇L_i|| (y) against its upper bound Σ_i ||∇L_i|| (x), one panel per gradient column.

    A linear relation (Pearson r near 1) is the paper's argument that ranking samples by their
    own gradient magnitude orders batches by how far they move the parameters. The y = x line
    is the bound itself; points far below it are batches whose gradients cancel. ``data``
    has one row per panel: ``column, batches, pearson_r``.
    """
    require(batch_bound, BOUND_COLUMNS, "batch_bound")
    table = finite(finite(batch_bound, "norm_of_sum"), "sum_of_norms")
    columns = sorted(table["column"].unique())
    fig, axes = panels(len(columns), width=4.0, height=3.8)
    stats = []
    for ax, column in zip(axes, columns, strict=False):
        rows = table[table["column"] == column]
        x, y = rows["sum_of_norms"].to_numpy(float), rows["norm_of_sum"].to_numpy(float)
        r = pearson(x, y)
        stats.append((column, len(rows), r))
        for epoch, at in rows.groupby("epoch"):
            ax.scatter(at["sum_of_norms"], at["norm_of_sum"], s=12, alpha=0.7, label=f"epoch {epoch}")
        hi = max(x.max(), y.max())
        ax.plot([0, hi], [0, hi], color="grey", ls=":", lw=1, label="bound (y = x)")
        ax.set_title(f"{column}: Pearson r = {r:.3f}" if np.isfinite(r) else f"{column}: r undefined")
        ax.set_xlabel("Σ ||∇L_i||  (sum of norms)")
        ax.set_ylabel("||Σ ∇L_i||  (norm of sum)")
        ax.legend(fontsize="small", loc="upper left")
        ax.grid(True, alpha=0.3)
    sizes = sorted(table["batch_size"].unique())
    fig.suptitle(f"Minibatch gradient vs its triangle bound (batch size {', '.join(map(str, sizes))})")
    return save(fig, path, pd.DataFrame(stats, columns=["column", "batches", "pearson_r"]))


def heatmap_matrix(trajectory: pd.DataFrame, column: str = "l2_last") -> pd.DataFrame:
    """−log10 of ``column``: probe samples (rows, largest final-epoch norm first) × epochs.

    Rows are ordered by the norm at the table's last epoch, descending, ties by sample_id;
    samples missing there come last. Norms ≤ 0 are shown as the smallest positive norm.
    """
    require(trajectory, ("sample_id", "epoch", column), "trajectory")
    table = finite(trajectory, column)
    if table.duplicated(["sample_id", "epoch"]).any():
        raise ValueError("trajectory has several rows for one (sample_id, epoch)")
    norms = table.pivot(index="sample_id", columns="epoch", values=column).sort_index(axis=1)
    positive = norms.to_numpy()[norms.to_numpy() > 0]
    if positive.size:
        norms = norms.where(norms.isna() | (norms > 0), positive.min())
    final = norms.iloc[:, -1] if norms.shape[1] else pd.Series(dtype=float)
    order = pd.DataFrame({"final": final, "id": norms.index}).sort_values(
        ["final", "id"], ascending=[False, True], na_position="last").index
    return -np.log10(norms.loc[order])


def trajectory_heatmap(trajectory: pd.DataFrame, path: str | Path, column: str = "l2_last") -> Rendered:
    """Figs. 2 and 5: −log ||∇L_i|| of the probe images (y, sorted by final norm) over epochs (x).

    Colour is −log10 of the norm, i.e. the norm on a log scale, in grey: black is a large
    gradient, white a small one, as in the paper. Early on all magnitudes are alike; by the
    end a few images still have large gradients (MNIST, Fig. 2) or many do (CIFAR, Fig. 5),
    which is the paper's redundancy argument. A sample missing at an epoch (a partial table)
    is a red cell. ``data`` is :func:`heatmap_matrix`.
    """
    matrix = heatmap_matrix(trajectory, column)
    if matrix.empty:
        raise ValueError(f"trajectory has no finite {column!r} values")
    fig, (ax,) = panels(1, width=7.5, height=5.0)
    epochs = matrix.columns.to_numpy(dtype=float)
    mids = (epochs[1:] + epochs[:-1]) / 2
    x_edges = np.concatenate([[epochs[0] - 0.5], mids, [epochs[-1] + 0.5]])
    y_edges = np.arange(len(matrix) + 1) - 0.5
    cmap = colormaps["gray"].with_extremes(bad="tab:red")
    image = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(matrix.to_numpy()), cmap=cmap)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=ax, label=f"−log10 {column}  (black: large gradient)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"probe image (rank by final {column})")
    ax.set_title(f"Per-sample gradient magnitude of {len(matrix)} probe images")
    return save(fig, path, matrix)
