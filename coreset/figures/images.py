"""Looking at the images a score singles out.

The gradient-magnitude paper's Fig. 4 (MNIST images at the 99th/95th/50th/5th percentile of
the final gradient magnitude: the largest are ill-written, the rest progressively easier),
Figs. 10 and 11 (CIFAR-10 images with the largest gradients) and GradSimCore's Figs. 1-8
(best and worst ranked images of a class) are all a grid of images with their class names;
:func:`percentile_rows` picks which images.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from coreset.figures.canvas import Rendered, figure, require, save

CHANNELS = (1, 3)


def percentile_rows(scores: pd.DataFrame, percentiles: Sequence[float] = (99, 95, 50, 5), per: int = 8,
                    column: str = "score") -> pd.DataFrame:
    """``per`` samples around each percentile of ``column`` (one ranking), as in Fig. 4.

    Samples are ranked by ascending ``column``, ties to the lower sample_id, so the choice is
    deterministic; percentile p picks the ``per`` consecutive ranks centred on rank
    round(p/100 · (N-1)), shifted to stay inside [0, N). Returns ``percentile, rank,
    sample_id, <column>`` (and ``label`` when ``scores`` has it), highest rank first.
    """
    require(scores, ("sample_id", column), "scores")
    if "method" in scores.columns and scores["method"].nunique() > 1:
        raise ValueError(f"scores hold several rankings {sorted(scores['method'].unique())}; pass one")
    if per < 1:
        raise ValueError(f"per must be >= 1, got {per}")
    bad = [p for p in percentiles if not 0 <= p <= 100]
    if bad:
        raise ValueError(f"percentiles must lie in [0, 100], got {bad}")
    ranked = scores.sort_values([column, "sample_id"], kind="stable").reset_index(drop=True)
    n, take = len(ranked), min(per, len(ranked))
    keep = ["sample_id", column] + (["label"] if "label" in ranked.columns else [])
    parts = []
    for p in percentiles:
        centre = int(np.floor(p / 100 * (n - 1) + 0.5))
        start = min(max(centre - take // 2, 0), n - take)
        rows = ranked.iloc[start:start + take][keep].iloc[::-1]
        parts.append(rows.assign(percentile=p, rank=rows.index))
    columns = ["percentile", "rank"] + keep
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def as_hwc(images: np.ndarray) -> np.ndarray:
    """uint8 N×H×W (grey), N×C×H×W or N×H×W×C (C = 1 or 3) as N×H×W×C."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        return images[..., None]
    if images.ndim == 4:
        first, last = images.shape[1] in CHANNELS, images.shape[3] in CHANNELS
        if first and not last:
            return images.transpose(0, 2, 3, 1)
        if last and not first:
            return images
    raise ValueError(f"images must be N×H×W, N×C×H×W or N×H×W×C with C in {CHANNELS}, got shape {images.shape}")


def image_grid(images: np.ndarray, titles: Sequence[str], path: str | Path, cols: int = 8,
               title: str | None = None) -> Rendered:
    """A grid of images, each titled (its class name, or class and score), ``cols`` to a row.

    ``images`` are uint8, N×H×W (grey) or N×C×H×W / N×H×W×C with C = 1 (grey) or 3 (RGB),
    e.g. ``ImageSet.images[ids].numpy()``. ``data``: ``position, title`` per image.
    """
    pixels = as_hwc(images)
    if len(titles) != len(pixels):
        raise ValueError(f"{len(pixels)} images but {len(titles)} titles")
    if len(pixels) == 0:
        raise ValueError("no images to draw")
    cols = max(1, min(cols, len(pixels)))
    rows = -(-len(pixels) // cols)
    fig = figure(1.3 * cols, 1.45 * rows + (0.4 if title else 0))
    grid = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(grid.ravel()):
        ax.set_axis_off()
        if i < len(pixels):
            grey = pixels.shape[3] == 1
            ax.imshow(pixels[i, ..., 0] if grey else pixels[i], cmap="gray" if grey else None,
                      vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(str(titles[i]), fontsize="small")
    if title:
        fig.suptitle(title)
    return save(fig, path, pd.DataFrame({"position": np.arange(len(pixels)), "title": list(titles)}))
