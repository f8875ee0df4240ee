"""Subset diagnostics (issue 14): what each method's subset looks like, class by class, so a
reader can see why a method wins or loses.

For every (method, fraction, seed) subset in ``subsets/`` and every class c: ``images``, the
subset's images of c; ``mean_cosine``, the mean pairwise cosine of their last-layer gradients at
the trained model (high: the subset repeats one kind of image; low: it spreads over the class);
``near_duplicates``, how many of them have another subset image of c at gradient cosine
>= :data:`NEAR_DUPLICATE_COSINE` (budget spent on copies). The report sets the cosine against
Random's at the same fraction, the chance level of the class.

The gradient g_i = err_i ⊗ [h_i; 1] (weights and bias, as every last-layer method here) is never
formed: cos(g_i, g_j) = cos(err_i, err_j)·cos([h_i; 1], [h_j; 1]) from the row-normalised factors
(:func:`coreset.similarity.factors.unit_factors`, whose convention holds: an image whose ``err`` is
all zero has cosine 0 with every image, so it is never a near-duplicate).

The work goes by class unit (:func:`coreset.stages.score.class_units`), as by-class scoring does:
a unit reads its factor rows once for every subset of every method, fraction and seed, and a
class costs O(k_c²) cosines per subset (k_c: its compared images, at most :data:`MAX_COMPARED`).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from coreset import layout
from coreset.methods import Inputs
from coreset.similarity import stack_list_column
from coreset.similarity.factors import unit_factors
from coreset.stages.score import class_units, read_inputs, recorded_settings
from coreset.storage import StudyRoot
from coreset.tables import read_table, write_table

NEAR_DUPLICATE_COSINE = 0.99
"""Two images of a class whose last-layer gradients have cosine >= this (within ~8°) move the
classifier the same way: training on the second adds almost nothing the first did not. The
level is set so high that only near-copies count (duplicated or near-identical images with the
same prediction error), not images that are merely alike (GradSimCore's Φ, by default the 0.9
quantile of a class's cosines, marks those)."""

MAX_COMPARED = 1024
"""At most this many of a subset's images of one class are compared, a uniform sample without
replacement (seeded by :data:`SAMPLE_SEED` and the class; ``compared`` records the count). It
bounds a class's work at 1024² cosines per subset whatever the dataset: an ImageNet class at 20%
has 260 images (never sampled), an MNIST class at 20% 1200. The sample's mean cosine is an
unbiased estimate of the mean over all pairs; near-duplicates are counted within the sample,
an undercount (a pair counts only when both are drawn), so the report shows their share of
the compared images."""

SAMPLE_SEED = 0
UNION_LIMIT = 4096  # one cosine matrix over a class's union of subset images up to this size (64 MB float32)
SUBSET_KEYS = ["method", "fraction", "seed"]
COLUMNS = [*SUBSET_KEYS, "label", "images", "compared", "mean_cosine", "near_duplicates"]
TABLE = layout.analysis("subset_diagnostics")


@dataclass(frozen=True)
class DiagnosticsPlan:
    """What the table is computed from (``key``, recorded in its manifest: the subsets'
    recorded settings and this module's constants), whether the table written matches it, and
    why it cannot be computed (``skip``), if so."""

    key: dict[str, Any]
    done: bool
    skip: str | None = None


def subset_methods(root: StudyRoot) -> list[str]:
    """The methods with a subsets file, sorted."""
    return [n.removesuffix(".parquet") for n in root.list(layout.SUBSETS) if n.endswith(".parquet")]


def missing_factors(root: StudyRoot, table: dict[str, Any]) -> str | None:
    """Why the final checkpoint's last-layer factors cannot be read, or None when they can (the
    first shard's schema tells: every shard has the same)."""
    final = int(table["final_epoch"])
    first = layout.gradient_shard(final, 0)
    if not root.exists(first):
        return f"the gradient table has no shard at the final epoch {final}"
    names = pq.read_schema(root.path(first), filesystem=root.fs).names
    if not {"err", "emb"} <= set(names):
        return f"the gradient table has no last-layer factors (err, emb) at the final epoch {final}"
    return None


def plan(root: StudyRoot, table: dict[str, Any]) -> DiagnosticsPlan:
    """Whether the diagnostics are up to date: they are recomputed when any subsets file was
    rewritten with other settings, added or removed. Reads manifests and one schema only."""
    methods = subset_methods(root)
    recorded = recorded_settings(root)
    key = {"final_epoch": int(table["final_epoch"]), "subsets": {m: recorded.get(m) for m in methods},
           "near_duplicate_cosine": NEAR_DUPLICATE_COSINE, "max_compared": MAX_COMPARED, "sample_seed": SAMPLE_SEED}
    skip = "no subsets written" if not methods else missing_factors(root, table)
    manifest = layout.SUBSET_DIAGNOSTICS_MANIFEST
    written = root.exists(manifest) and root.exists(TABLE) and json.loads(root.read_bytes(manifest)) == key
    return DiagnosticsPlan(key, skip is None and written, skip)


def labelled_subsets(root: StudyRoot) -> tuple[pd.DataFrame, np.ndarray]:
    """Every subset row with its image's ``label``, and the train split's labels (sorted)."""
    split = read_table(root, layout.SPLIT, "split")
    subsets = pd.read_parquet(root.url(layout.SUBSETS), columns=[*SUBSET_KEYS, "sample_id"])
    labels = split.drop_duplicates("sample_id").set_index("sample_id")["label"]
    subsets["label"] = labels.loc[subsets["sample_id"]].to_numpy()
    return subsets, np.sort(split.loc[split["split"] == "train", "label"].unique())


def unit_work(subsets: pd.DataFrame, table: dict[str, Any]) -> list[tuple[list[int], pd.DataFrame]]:
    """Each class unit's shards with the subset rows of its classes; units no subset reaches are
    left out. Shards hold classes in label order, so a unit holds the labels above the previous
    unit's highest up to its own; the manifest's first entry per shard is the label of the shard's
    first sample id, which is not its lowest label when a shard holds several classes."""
    work, below = [], -np.inf
    for shards in class_units(table):
        highest = table["shard_labels"][shards[-1]][1]
        rows = subsets[(subsets["label"] > below) & (subsets["label"] <= highest)]
        below = highest
        if len(rows):
            work.append((shards, rows.reset_index(drop=True)))
    return work


def diagnose_unit(root: StudyRoot, table: dict[str, Any], shards: list[int], subsets: pd.DataFrame
                  ) -> pd.DataFrame:
    """The diagnostics of the classes of one unit: its factor rows at the final epoch, read once."""
    inputs = Inputs(columns=("err", "emb"), epochs=(int(table["final_epoch"]),))
    return diagnose(read_inputs(root, inputs, table, shards), subsets)


def diagnose(factors: pd.DataFrame, subsets: pd.DataFrame, threshold: float = NEAR_DUPLICATE_COSINE,
             max_compared: int = MAX_COMPARED) -> pd.DataFrame:
    """``COLUMNS`` for each subset (``subsets``: method, fraction, seed, sample_id, label) and each
    class of ``factors`` (sample_id, label, err, emb at one checkpoint) that it holds images of."""
    lost = np.setdiff1d(subsets["label"].unique(), factors["label"].unique())
    if lost.size:
        raise ValueError(f"subset images of classes {lost[:5].tolist()} have no gradient rows here")
    rows: list[tuple] = []
    for label, group in factors.groupby("label", sort=True):
        members = subsets[subsets["label"] == label]
        if members.empty:
            continue
        group = group.sort_values("sample_id")
        err, emb = unit_factors(stack_list_column(group["err"]), stack_list_column(group["emb"]), torch.float32)
        rows += class_diagnostics(int(label), group["sample_id"].to_numpy(), err, emb, members, threshold,
                                  max_compared)
    return pd.DataFrame(rows, columns=COLUMNS)


def class_diagnostics(label: int, ids: np.ndarray, err: torch.Tensor, emb: torch.Tensor, members: pd.DataFrame,
                      threshold: float, max_compared: int) -> list[tuple]:
    """One class's rows: ``ids`` its sorted sample ids, ``err``/``emb`` their unit factors,
    ``members`` the subset rows of the class."""
    groups = list(members.groupby(SUBSET_KEYS, sort=True)["sample_id"])
    positions = [compared_positions(ids, g.to_numpy(), label, max_compared) for _, g in groups]
    rows = []
    for ((key, g), pos, cos) in zip(groups, positions, subset_cosines(err, emb, positions), strict=True):
        mean, near = summarise(cos, threshold)
        rows.append((*key, label, len(g), len(pos), mean, near))
    return rows


def compared_positions(ids: np.ndarray, members: np.ndarray, label: int, max_compared: int) -> np.ndarray:
    """Sorted row positions in ``ids`` of the ``members`` compared: all, or a seeded sample of ``max_compared``."""
    members = np.sort(members)
    pos = np.searchsorted(ids, members)
    lost = (pos >= len(ids)) | (ids[np.minimum(pos, len(ids) - 1)] != members)
    if lost.any():
        raise ValueError(f"subset images {members[lost][:5].tolist()} of class {label} have no gradient row")
    if len(pos) > max_compared:
        pos = np.random.default_rng((SAMPLE_SEED, label)).choice(pos, max_compared, replace=False)
    return np.sort(pos)


def subset_cosines(err: torch.Tensor, emb: torch.Tensor, positions: list[np.ndarray]) -> Iterator[torch.Tensor]:
    """Each subset's cosine matrix, in order. Subsets of one class overlap (methods agree, seeds
    and fractions nest), so when one matrix over their union costs no more than a product per
    subset (u² <= Σ k²) and fits UNION_LIMIT, it is computed once and indexed."""
    union = np.unique(np.concatenate(positions))
    if len(union) <= UNION_LIMIT and len(union) ** 2 <= sum(len(p) ** 2 for p in positions):
        full = cosines(err, emb, union)
        for pos in positions:
            index = torch.from_numpy(np.searchsorted(union, pos))
            yield full[index][:, index]
    else:
        for pos in positions:
            yield cosines(err, emb, pos)


def cosines(err: torch.Tensor, emb: torch.Tensor, pos: np.ndarray) -> torch.Tensor:
    """cos(g_i, g_j) of the rows ``pos`` from unit factors: two small products, never the gradients."""
    index = torch.from_numpy(pos)
    e, h = err[index], emb[index]
    return (e @ e.T).mul_(h @ h.T)


def summarise(cos: torch.Tensor, threshold: float) -> tuple[float, int]:
    """(mean off-diagonal cosine, NaN below 2 images; images with another at >= ``threshold``).
    Overwrites ``cos``'s diagonal (each caller's matrix is its own)."""
    k = len(cos)
    if k < 2:
        return float("nan"), 0
    total = cos.sum(dtype=torch.float64) - cos.diagonal().sum(dtype=torch.float64)
    cos.fill_diagonal_(-torch.inf)
    return float(total) / (k * (k - 1)), int((cos.max(dim=1).values >= threshold).sum())


def merge(parts: list[pd.DataFrame], subsets: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """One table from the units' rows with a row for every subset and train class: a class a
    subset holds no image of gets 0 images, 0 near-duplicates and a NaN cosine."""
    keys = subsets[SUBSET_KEYS].drop_duplicates()
    grid = keys.merge(pd.DataFrame({"label": labels}), how="cross")
    found = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    out = grid.merge(found, on=[*SUBSET_KEYS, "label"], how="left")
    out[["images", "compared", "near_duplicates"]] = out[["images", "compared", "near_duplicates"]].fillna(0)
    out = out.astype({"images": "int64", "compared": "int64", "near_duplicates": "int64", "mean_cosine": "float64"})
    return out.sort_values([*SUBSET_KEYS, "label"]).reset_index(drop=True)[COLUMNS]


def write(root: StudyRoot, work: DiagnosticsPlan, table: pd.DataFrame) -> None:
    """Publish the table, then record what it was computed from."""
    write_table(root, TABLE, table, "subset_diagnostics")
    root.write_bytes(layout.SUBSET_DIAGNOSTICS_MANIFEST, json.dumps(work.key, indent=2).encode())
