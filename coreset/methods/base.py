"""The selection-method interface: gradient table → per-sample score → subset.

Scoring is deterministic given the table (and the method's parameters); only selection
takes a seed, so one score table serves every (fraction, seed) of a study. A method
implements ``score`` and, if it is not "top-k by score", ``pick``; budgets and the
per-class split live here so every method rounds the same way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import numpy as np
import pandas as pd

from coreset.methods.budget import BUDGETS, class_budgets, global_budget
from coreset.registry import Registry

SCORE_COLUMNS = ["sample_id", "label", "score"]


class SelectionMethod(ABC):
    """Scores samples, then selects ``fraction`` of the scored rows under a budget."""

    name: str = ""
    default_budget: str = "global"

    @abstractmethod
    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        """One row per sample: ``sample_id, label, score`` sorted by sample_id."""

    def pick(self, scores: pd.DataFrame, k: int, rng: np.random.Generator) -> np.ndarray:
        """k sample_ids from one pool; default: highest score, ties to the lower sample_id."""
        return top_k(scores, k)

    def select(self, scores: pd.DataFrame, fraction: float, seed: int, budget: Optional[str] = None) -> np.ndarray:
        """Sorted sample_ids of the subset; k counts rows of ``scores`` (the train split)."""
        budget = budget or self.default_budget
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
        check_scores(scores)
        k = global_budget(len(scores), fraction)
        rng = np.random.default_rng(seed)
        if budget == "global":
            return np.sort(self.pick(scores, k, rng))
        groups = dict(tuple(scores.groupby("label", sort=True)))
        budgets = class_budgets({c: len(g) for c, g in groups.items()}, k)
        parts = [self.pick(groups[c], k_c, rng) for c, k_c in budgets.items() if k_c > 0]
        return np.sort(np.concatenate(parts)).astype(np.int64)


def top_k(scores: pd.DataFrame, k: int) -> np.ndarray:
    """The k highest scores; equal scores are broken by the lower sample_id."""
    ids = scores["sample_id"].to_numpy()
    order = np.lexsort((ids, -scores["score"].to_numpy(dtype=np.float64)))
    return ids[order[:k]].astype(np.int64)


def check_scores(scores: pd.DataFrame) -> None:
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"score table lacks {missing}; it has {list(scores.columns)}")
    if scores["sample_id"].duplicated().any():
        raise ValueError("score table has duplicate sample_id rows")


def at_epoch(table: pd.DataFrame, epoch: Optional[int]) -> pd.DataFrame:
    """Rows of one checkpoint: ``epoch``, or the last epoch present when None."""
    if "epoch" not in table.columns:
        return table
    chosen = int(table["epoch"].max()) if epoch is None else epoch
    rows = table[table["epoch"] == chosen]
    if rows.empty:
        raise ValueError(f"no rows at epoch {chosen}; epochs present: {sorted(table['epoch'].unique().tolist())}")
    return rows


def score_frame(rows: pd.DataFrame, score: np.ndarray) -> pd.DataFrame:
    """The standard score table, sorted by sample_id."""
    out = pd.DataFrame({"sample_id": rows["sample_id"].to_numpy(np.int64), "label": rows["label"].to_numpy(np.int64), "score": np.asarray(score, dtype=np.float64)})
    return out.sort_values("sample_id", kind="stable").reset_index(drop=True)


METHODS: Registry[type[SelectionMethod]] = Registry("selection method")
