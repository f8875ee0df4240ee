"""What every figure module shares: an Agg-backed ``Figure``, column checks and saving.

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas, never through
pyplot, so drawing a report leaves no global state behind (no open figures, no backend switch)
and works on headless Ray nodes.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

PANEL_WIDTH, PANEL_HEIGHT, MAX_COLS, DPI = 4.6, 3.6, 3, 120


@dataclass(frozen=True)
class Rendered:
    """A written PNG and the numbers it draws (one row per plotted point, bar or cell)."""

    path: Path
    data: pd.DataFrame


def require(table: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    """Raise a ValueError naming the columns ``table`` lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} table lacks columns {missing}; columns present: {list(table.columns)}")


def figure(width: float, height: float) -> Figure:
    """An empty ``width`` × ``height`` inch figure on its own Agg canvas, constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def panels(n: int, width: float = PANEL_WIDTH, height: float = PANEL_HEIGHT,
           sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` panels, at most MAX_COLS to a row, laid out without overlapping text."""
    if n < 1:
        raise ValueError("nothing to plot: every panel is empty")
    cols = min(n, MAX_COLS)
    rows = -(-n // cols)
    fig = figure(width * cols, height * rows)
    grid = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    axes = list(grid.ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def colours(names: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One stable colour per name, so a method looks the same in every panel and figure."""
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(sorted(names))}


LINE_STYLES = ("-", "--", ":", "-.")
LEGEND_INSIDE = 8  # more entries than this go beside the axes: two dozen methods would hide the curves


def line_styles(names: Sequence[str]) -> dict[str, dict[str, object]]:
    """A stable colour and line style per name: the ten tab10 colours solid, then dashed,
    dotted and dash-dotted, so each of 40 methods is its own line (tab20's pale pairs and a
    cycle of 20 made two dozen methods hard to tell apart)."""
    cmap = colormaps["tab10"]
    return {name: {"color": cmap(i % 10), "ls": LINE_STYLES[i // 10 % len(LINE_STYLES)]}
            for i, name in enumerate(sorted(names))}


def legend(fig: Figure, ax: Axes, loc: str = "lower right") -> None:
    """``ax``'s legend inside it at ``loc`` for a few entries; for more, one column beside
    the panels, the figure widened (and made taller if needed) to hold it."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= LEGEND_INSIDE:
        ax.legend(fontsize="small", loc=loc)
        return
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 0.08 * max(map(len, labels)) + 0.8, max(height, 0.2 * len(labels) + 0.8))
    fig.legend(handles, labels, loc="outside right center", fontsize="small")


def save(fig: Figure, path: str | Path, data: pd.DataFrame) -> Rendered:
    """Write ``fig`` as PNG at ``path`` (parents created) and pair it with its numbers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return Rendered(path, data)


def finite(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows whose ``column`` is a finite number (partial tables carry NaN for unfinished work)."""
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    return table[np.isfinite(values)]


def percent_axis(ax: Axes) -> None:
    """A log x axis of fractions labelled in percent of the training set, as the papers do."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.10g}%"))
