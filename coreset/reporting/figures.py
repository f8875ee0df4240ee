"""What each figure of the study report is drawn from, and how.

A :class:`FigureSpec` names the root tables a figure reads (``inputs``: ``None`` while one is
missing, so a partial study gives a partial report), the settings its drawing depends on, its
caption (the paper figure it reproduces, one sentence on how to read it) and ``draw``, which
reads those tables and calls :mod:`coreset.figures`. ``draw`` returns a sentence instead of a
figure when it cannot draw after all (no images to show), which the page prints in its place.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import torch

from coreset import figures, layout
from coreset.analysis import source_spread, topk_overlap_curve
from coreset.cli import check_study, recorded_config
from coreset.config import StudyConfig
from coreset.data import Datasets, load_datasets
from coreset.data.decode import resize_center_crop
from coreset.errors import StageError, UserError
from coreset.methods.base import top_k
from coreset.stages.subset_diagnostics import NEAR_DUPLICATE_COSINE
from coreset.stages.train import source_seed
from coreset.storage import StudyRoot
from coreset.tables import read_table

FILE_IMAGE_SIZE = 64  # file-backed sets (ImageNet): the few images shown are decoded at this size
PER_PERCENTILE, TOP_IMAGES, RANKED_CLASSES, PER_END = 8, 16, 4, 6
DIAGNOSTICS_REFERENCE = "random"  # the subsets whose within-class cosine is chance level


@dataclass
class Sources:
    """The roots a report reads, and the study's images, loaded only if a figure needs them."""

    cfg: StudyConfig
    root: StudyRoot
    compare: StudyRoot | None = None
    replicas: tuple[StudyRoot, ...] = ()  # the same study with other source models (train.seed)

    @cached_property
    def datasets(self) -> Datasets | str:
        """The dataset, or why it cannot be loaded (then image figures are left out)."""
        try:
            return load_datasets(self.cfg.data)
        except UserError as e:
            return f"images not shown: {e}"

    def images(self, ids: np.ndarray) -> tuple[np.ndarray, list[str]] | str:
        """uint8 ``N×C×H×W`` images of train ``ids`` and their class names; file-backed sets decode just these."""
        data = self.datasets
        if isinstance(data, str):
            return data
        train, index = data.train, torch.from_numpy(np.array(ids, dtype=np.int64))
        if train.in_memory:
            pixels = train.images[index].numpy()
        else:
            pixels = np.stack([resize_center_crop(train.decode(int(i)), FILE_IMAGE_SIZE).numpy() for i in ids])
        return pixels, [train.classes[int(c)] for c in train.labels[index]]


@dataclass(frozen=True)
class FigureSpec:
    name: str
    stage: str
    title: str
    reproduces: str
    how_to_read: str
    needs: str  # what to run when it cannot be drawn
    inputs: Callable[[Sources], list[tuple[StudyRoot, str]] | None]
    draw: Callable[[Sources, Path], figures.Rendered | str]
    settings: Callable[[Sources], dict[str, Any]] = lambda src: {}


def _present(root: StudyRoot, *rels: str) -> list[tuple[StudyRoot, str]] | None:
    return [(root, r) for r in rels] if all(root.exists(r) for r in rels) else None


def _gradient_final(root: StudyRoot) -> int | None:
    if not root.exists(layout.GRADIENTS_MANIFEST):
        return None
    return int(json.loads(root.read_bytes(layout.GRADIENTS_MANIFEST))["final_epoch"])


def magnitude_inputs(root: StudyRoot) -> list[tuple[StudyRoot, str]] | None:
    """Max-Gradient's scores (the magnitude at the final checkpoint), else the gradient table there."""
    scores = _present(root, layout.scores("max_gradient"))
    final = _gradient_final(root)
    return scores or (None if final is None else _present(root, layout.GRADIENTS_MANIFEST,
                                                          layout.gradient_epoch(final)))


def magnitude(cfg: StudyConfig, root: StudyRoot) -> pd.DataFrame:
    """``sample_id, label, score``: each train image's ``score.norm`` at the final checkpoint."""
    if root.exists(layout.scores("max_gradient")):
        return read_table(root, layout.scores("max_gradient"), "scores")[["sample_id", "label", "score"]]
    final = _gradient_final(root)
    dataset = pads.dataset(root.path(layout.gradient_epoch(final)), filesystem=root.fs, format="parquet")
    if cfg.score.norm not in dataset.schema.names:
        raise StageError(f"the gradient table of {root.url()} has no {cfg.score.norm!r} column at epoch {final}")
    table = dataset.to_table(columns=["sample_id", "label", cfg.score.norm]).to_pandas()
    return table.rename(columns={cfg.score.norm: "score"}).sort_values("sample_id").reset_index(drop=True)


def _norm(src: Sources) -> dict[str, Any]:
    return {"norm": src.cfg.score.norm}


def _trajectory(src: Sources, path: Path) -> figures.Rendered:
    return figures.trajectory_heatmap(read_table(src.root, layout.TRAJECTORY, "trajectory"), path)


def _batch_bound(src: Sources, path: Path) -> figures.Rendered:
    return figures.batch_bound(read_table(src.root, layout.BATCH_BOUND, "batch_bound"), path)


def _percentile_images(src: Sources, path: Path) -> figures.Rendered | str:
    rows = figures.percentile_rows(magnitude(src.cfg, src.root), per=PER_PERCENTILE)
    got = src.images(rows["sample_id"].to_numpy())
    if isinstance(got, str):
        return got
    pixels, names = got
    titles = [f"p{p:g} {n}" for p, n in zip(rows["percentile"], names, strict=True)]
    out = figures.image_grid(pixels, titles, path, cols=PER_PERCENTILE,
                             title=f"Rows: 99th, 95th, 50th, 5th percentile of {src.cfg.score.norm}")
    return _shown(out, rows.assign(class_name=names))


def _top_images(src: Sources, path: Path) -> figures.Rendered | str:
    scores = magnitude(src.cfg, src.root)
    ids = top_k(scores, TOP_IMAGES)
    got = src.images(ids)
    if isinstance(got, str):
        return got
    pixels, names = got
    out = figures.image_grid(pixels, names, path, cols=8, title=f"The {len(ids)} largest {src.cfg.score.norm}")
    rows = scores.set_index("sample_id").loc[ids].reset_index()
    return _shown(out, rows.assign(rank=np.arange(1, len(ids) + 1), class_name=names))


def _shown(out: figures.Rendered, rows: pd.DataFrame) -> figures.Rendered:
    """An image grid with the table of what it shows (sample ids, scores), not just its titles."""
    return figures.Rendered(out.path, pd.concat([out.data, rows.reset_index(drop=True)], axis=1))


def _split(root: StudyRoot) -> pd.DataFrame:
    return read_table(root, layout.SPLIT, "split")


def _label_entropy(src: Sources, path: Path) -> figures.Rendered:
    classes = int(_split(src.root)["label"].nunique())
    return figures.label_entropy(read_table(src.root, layout.analysis("label_entropy"), "label_entropy"), classes, path)


def _thresholds(src: Sources, path: Path) -> figures.Rendered:
    table = read_table(src.root, layout.analysis("gradsim_thresholds"), "gradsim_thresholds")
    return figures.thresholds(table, path)


def _subset_composition(src: Sources, path: Path) -> figures.Rendered:
    subsets = pads.dataset(src.root.path(layout.SUBSETS), filesystem=src.root.fs, format="parquet").to_table()
    data = src.datasets
    names = None if isinstance(data, str) else data.train.classes
    return figures.subset_composition(subsets.to_pandas(), _split(src.root), path, class_names=names)


def _subset_diagnostics(src: Sources, path: Path) -> figures.Rendered | str:
    table = read_table(src.root, layout.analysis("subset_diagnostics"), "subset_diagnostics")
    if DIAGNOSTICS_REFERENCE not in set(table["method"]):
        return (f"not drawn: the within-subset cosines are drawn against {DIAGNOSTICS_REFERENCE}'s; "
                "add it to score.methods")
    return figures.subset_diagnostics(table, path, reference=DIAGNOSTICS_REFERENCE)


def _gradsimcore_images(src: Sources, path: Path) -> figures.Rendered | str:
    scores = read_table(src.root, layout.scores("gradsimcore"), "scores")
    labels = np.sort(scores["label"].unique())
    chosen = labels[np.unique(np.linspace(0, len(labels) - 1, min(RANKED_CLASSES, len(labels))).round().astype(int))]
    ids, ranks, ends = [], [], []
    for label in chosen:
        order = top_k(scores[scores["label"] == label], len(scores))
        per = min(PER_END, len(order) // 2)
        ids += [*order[:per], *order[len(order) - per:]]
        ranks += [*range(1, per + 1), *range(len(order) - per + 1, len(order) + 1)]
        ends += ["best"] * per + ["worst"] * per
    got = src.images(np.asarray(ids, dtype=np.int64))
    if isinstance(got, str):
        return got
    pixels, names = got
    titles = [f"{n}\n{'best' if e == 'best' else 'rank'} {r}" for n, e, r in zip(names, ends, ranks, strict=True)]
    out = figures.image_grid(pixels, titles, path, cols=2 * PER_END,
                             title="GradSimCore: best-ranked (left) and worst-ranked (right) images per class")
    rows = scores.set_index("sample_id").loc[ids].reset_index()
    return _shown(out, rows.assign(end=ends, class_rank=ranks, class_name=names))


def _overlap_inputs(src: Sources) -> list[tuple[StudyRoot, str]] | None:
    if src.compare is None:
        return None
    ours, theirs = magnitude_inputs(src.root), magnitude_inputs(src.compare)
    return ours + theirs if ours and theirs else None


def _overlap(src: Sources, path: Path) -> figures.Rendered:
    assert src.compare is not None
    a, b = magnitude(src.cfg, src.root), magnitude(src.cfg, src.compare)
    if set(a["sample_id"]) != set(b["sample_id"]):
        raise StageError(f"{src.compare.url()} ranks other images than {src.root.url()}; "
                         "--compare needs a study of the same dataset and split")
    fractions = sorted({f for f in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0) if f * len(a) >= 1})
    curve = topk_overlap_curve(a, b, fractions=fractions)
    label = " ∩ ".join(r.url().split("?")[0].rstrip("/").rsplit("/", 1)[-1] for r in (src.root, src.compare))
    return figures.topk_overlap(curve, path, label=label)


def _spread_inputs(src: Sources) -> list[tuple[StudyRoot, str]] | None:
    if not src.replicas:
        return None
    inputs = [_present(r, layout.ACCURACY, layout.CONFIG) for r in (src.root, *src.replicas)]
    return None if any(i is None for i in inputs) else [x for i in inputs for x in i or []]


def source_accuracy(src: Sources) -> pd.DataFrame:
    """Every root's accuracy rows with its ``source_seed``: the root's and its replicas', each
    checked to be this study (the same identity but for ``train.seed``) with a seed of its own."""
    frames, seeds = [], {}
    for root in (src.root, *src.replicas):
        recorded = recorded_config(root)
        check_study(src.cfg, root, ignore=("train.seed",), recorded=recorded)
        seed = source_seed(recorded)
        if seed in seeds:
            raise StageError(f"{root.url()} and {seeds[seed]} trained their source models from the same seed "
                             f"{seed}; a replica needs another train.seed")
        seeds[seed] = root.url()
        frames.append(read_table(root, layout.ACCURACY, "accuracy").assign(source_seed=seed))
    return pd.concat(frames, ignore_index=True)


def _source_spread(src: Sources, path: Path) -> figures.Rendered:
    accuracy = source_accuracy(src)
    return figures.source_spread(source_spread(accuracy[accuracy["method"] != "full"]), path)


def _accuracy(src: Sources, path: Path) -> figures.Rendered:
    return figures.accuracy_vs_fraction(read_table(src.root, layout.ACCURACY, "accuracy"), path)


TRAIN, GRADIENTS, SCORE, RETRAIN = ("Source training", "Per-sample gradients", "Scores and subsets",
                                    "Retraining on the subsets")
STAGES = (TRAIN, GRADIENTS, SCORE, RETRAIN)

SPECS: tuple[FigureSpec, ...] = (
    FigureSpec("trajectory", TRAIN, "Gradient magnitudes of the probe images over training",
               "gradient-magnitude paper, Figs. 2 (MNIST) and 5 (CIFAR)",
               "Each row is a probe image, sorted by its final gradient norm, each column an epoch; black is a large "
               "gradient, so rows that stay black are the images the model still gets wrong.",
               "source/trajectory.parquet (jobs/train.py)",
               lambda src: _present(src.root, layout.TRAJECTORY), _trajectory),
    FigureSpec("batch_bound", GRADIENTS, "Minibatch gradient against its triangle bound",
               "gradient-magnitude paper, Fig. 1",
               "Points near a straight line (Pearson r near 1) mean that the sum of per-sample gradient norms orders "
               "minibatches as the norm of their summed gradient does.",
               "batch_bound.parquet (jobs/gradients.py with gradients.bound_batches > 0)",
               lambda src: _present(src.root, layout.BATCH_BOUND), _batch_bound),
    FigureSpec("percentile_images", GRADIENTS, "Images by percentile of their final gradient magnitude",
               "gradient-magnitude paper, Fig. 4",
               "Each row holds images around one percentile of the magnitude, largest first: the top rows should "
               "look ambiguous or mislabelled, the lower rows progressively typical.",
               "scores/max_gradient.parquet or the gradient table (jobs/gradients.py)",
               lambda src: magnitude_inputs(src.root), _percentile_images, _norm),
    FigureSpec("top_images", GRADIENTS, "The images with the largest gradient magnitude",
               "gradient-magnitude paper, Figs. 10 and 11",
               "Look for what the images share (a class, a background): correlated top images are why Max-Gradient "
               "subsets can be unbalanced.",
               "scores/max_gradient.parquet or the gradient table (jobs/gradients.py)",
               lambda src: magnitude_inputs(src.root), _top_images, _norm),
    FigureSpec("label_entropy", SCORE, "Class balance of each ranking's top-k",
               "gradient-magnitude paper, Figs. 7 and 12",
               "A curve well below the dashed uniform line means the top-k of that ranking is dominated by a few "
               "classes.",
               "analysis/label_entropy.parquet (jobs/score.py)",
               lambda src: _present(src.root, layout.analysis("label_entropy"), layout.SPLIT), _label_entropy),
    FigureSpec("gradsim_thresholds", SCORE, "GradSimCore's similarity threshold Φ per class and checkpoint",
               "GradSimCore paper, Eq. 5 (Φ; the paper gives no value and no figure)",
               "Each line is one class's Φ over the checkpoints it sums; a class whose Φ stays high has gradients that "
               "are alike, so its counts separate typical from atypical images less.",
               "analysis/gradsim_thresholds.parquet (jobs/score.py with gradsimcore)",
               lambda src: _present(src.root, layout.analysis("gradsim_thresholds")), _thresholds),
    FigureSpec("subset_composition", SCORE, "Images per class in each method's subset",
               "the per-class view of the gradient-magnitude paper's Fig. 7",
               "Bars far from the dashed balanced line show a method that over- or under-selects a class.",
               "subsets/ (jobs/score.py)",
               lambda src: _present(src.root, layout.SUBSETS, layout.SPLIT), _subset_composition),
    FigureSpec("subset_diagnostics", SCORE, "How alike each method's subset images are, against random",
               "issue 14's subset diagnostics (neither paper has this figure)",
               "Left: a line above the dashed zero picks images of a class whose last-layer gradients are more alike "
               "than a random subset's (redundant), below it more diverse; right: the share of images that have a "
               f"near-copy (gradient cosine >= {NEAR_DUPLICATE_COSINE:g}) in their subset and class. Images per "
               "class are in subset_composition; the table has all three per class.",
               "analysis/subset_diagnostics.parquet (jobs/score.py; needs the final checkpoint's err and emb)",
               lambda src: _present(src.root, layout.analysis("subset_diagnostics")), _subset_diagnostics),
    FigureSpec("gradsimcore_images", SCORE, "GradSimCore's best- and worst-ranked images",
               "GradSimCore paper, Figs. 1-8",
               "Each row is one class: the left half should look typical of the class, the right half ambiguous or "
               "showing other objects.",
               "scores/gradsimcore.parquet (jobs/score.py with gradsimcore)",
               lambda src: _present(src.root, layout.scores("gradsimcore")), _gradsimcore_images),
    FigureSpec("topk_overlap", SCORE, "Top-k overlap of this study's gradient ranking with another study's",
               "gradient-magnitude paper, Fig. 6",
               "Overlap far above the dashed random line means the two models find the same images hard, so "
               "hardness belongs to the image more than to the model.",
               "a second study given with --compare, with scores or a gradient table",
               _overlap_inputs, _overlap,
               lambda src: {**_norm(src), "compare": src.compare.url() if src.compare else None}),
    FigureSpec("accuracy", RETRAIN, "Test accuracy of models retrained on each subset",
               "gradient-magnitude paper, Figs. 3 (MNIST), 8 (CIFAR) and 9 (ImageNet); GradSimCore paper, Tables 2-6",
               "A method whose curve reaches the dashed full-data line at a smaller fraction makes the better "
               "coreset; the band is ± one std over seeds.",
               "accuracy.parquet (jobs/retrain.py)",
               lambda src: _present(src.root, layout.ACCURACY), _accuracy),
    FigureSpec("source_spread", RETRAIN, "The spread over source models beside the spread over retraining seeds",
               "issue 14 (the gradient-magnitude paper's orderings depend on the source model)",
               "A method whose right-hand line stands well above its left-hand one owes its rank at that fraction to "
               "one source model: another source model orders the images differently.",
               "the same study run into other roots with other train.seed values, given with --replicas",
               _spread_inputs, _source_spread,
               lambda src: {"replicas": [r.url() for r in src.replicas]}),
)
