"""The score and select stages without Ray: methods built from the study config, gradient
rows read from the table with only the columns and rows a method needs, subsets for every
fraction and seed, and the label-entropy analysis of each ranking.
"""
from __future__ import annotations

import json

import pandas as pd
import pyarrow.dataset as pads

from coreset import layout
from coreset.analysis import label_entropy_curve
from coreset.config import StudyConfig
from coreset.methods import SelectionMethod, get_method
from coreset.storage import StudyRoot


def gradient_manifest(root: StudyRoot) -> dict:
    if not root.exists(layout.GRADIENTS_MANIFEST):
        raise ValueError(f"no gradient table in {root.url()}; run jobs/gradients.py first")
    return json.loads(root.read_bytes(layout.GRADIENTS_MANIFEST))


def build_method(cfg: StudyConfig, name: str, final_epoch: int) -> SelectionMethod:
    """The configured method ``name``; magnitude methods score the trained (final) checkpoint."""
    s = cfg.score
    if name == "random":
        return get_method(name, epoch=final_epoch)
    if name in ("max_gradient", "gradient_cdf"):
        return get_method(name, norm=s.norm, epoch=final_epoch)
    if name == "nonextreme_max_gradient":
        return get_method(name, norm=s.norm, epoch=final_epoch, drop_fraction=s.drop_fraction)
    if not cfg.gradients.factor_epochs:
        raise ValueError("gradsimcore needs gradients.factor_epochs (the early checkpoints it sums over)")
    params = {"threshold": s.threshold} if s.threshold is not None else {"threshold_quantile": s.threshold_quantile}
    return get_method(name, backend=s.backend, epochs=list(cfg.gradients.factor_epochs), seed=cfg.seed, **params)


def method_settings(cfg: StudyConfig, name: str, final_epoch: int) -> dict[str, object]:
    """Everything a method's scores and subsets depend on; a change re-scores that method."""
    s = cfg.score
    out: dict[str, object] = {"fractions": list(s.fractions), "seeds": list(s.seeds), "budget": s.budget,
                              "final_epoch": final_epoch}
    if name in ("max_gradient", "gradient_cdf", "nonextreme_max_gradient"):
        out["norm"] = s.norm
    if name == "nonextreme_max_gradient":
        out["drop_fraction"] = s.drop_fraction
    if name == "gradsimcore":
        out.update(threshold=s.threshold, threshold_quantile=s.threshold_quantile, backend=s.backend,
                   factor_epochs=list(cfg.gradients.factor_epochs), seed=cfg.seed)
    return out


def read_gradients(root: StudyRoot, columns: list[str], epochs: list[int], label: int | None = None) -> pd.DataFrame:
    """Rows of the gradient table at ``epochs`` (and one class), only ``columns``."""
    dataset = pads.dataset(root.path(layout.GRADIENTS), filesystem=root.fs, format="parquet",
                           exclude_invalid_files=False)
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"gradient table lacks {missing}; columns present: {dataset.schema.names}")
    flt = pads.field("epoch").isin(epochs)
    if label is not None:
        flt = flt & (pads.field("label") == label)
    return dataset.to_table(columns=columns, filter=flt).to_pandas()


def subsets_frame(method: SelectionMethod, scores: pd.DataFrame, cfg: StudyConfig) -> pd.DataFrame:
    """``method, fraction, seed, sample_id`` for every configured fraction and seed."""
    budget = None if cfg.score.budget == "default" else cfg.score.budget
    parts = []
    for fraction in cfg.score.fractions:
        for seed in cfg.score.seeds:
            ids = method.select(scores, fraction, seed, budget)
            parts.append(pd.DataFrame({"method": method.name, "fraction": fraction, "seed": seed, "sample_id": ids}))
    return pd.concat(parts, ignore_index=True)


def entropy_frame(method: str, scores: pd.DataFrame, fractions: tuple[float, ...]) -> pd.DataFrame:
    """Label entropy of the method's top-k at each fraction (the paper's Figure 7)."""
    curve = label_entropy_curve(scores, fractions=sorted(set(fractions) | {1.0}))
    curve.insert(0, "method", method)
    return curve


def with_method(scores: pd.DataFrame, method: str) -> pd.DataFrame:
    out = scores[["sample_id", "label", "score"]].copy()
    out.insert(2, "method", method)
    return out
