"""The selection-method interface: study tables → per-sample score → subset.

Scoring is deterministic given the table (and the method's parameters); only selection
takes a seed, so one score table serves every (fraction, seed) of a study. A method
implements ``score`` and, if it is not "top-k by score", ``pick``; budgets and the
per-class split live here so every method rounds the same way.

A method also describes itself, so that the config, the score stage and its settings
manifest need no list of method names: ``Params`` (its typed parameters with defaults,
set under ``score.params.<method>``), ``from_study`` (built from those and the study's
:class:`Context`), ``inputs`` (the columns and checkpoints it reads, and whether it scores
one class at a time), ``settings`` (everything its result depends on), ``ranking`` (the
name of the ordering its scores define, for the label-entropy analysis) and
``analysis_tables`` (side tables a scoring produced, such as GradSimCore's Φ).
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from coreset.methods.budget import BUDGETS, class_budgets, global_budget
from coreset.registry import Registry

SCORE_COLUMNS = ["sample_id", "label", "score"]


@dataclass(frozen=True)
class NoParams:
    """The parameters of a method that has none."""

    def validate(self, prefix: str) -> None:
        """Raise :class:`~coreset.errors.ConfigError` naming ``prefix + field`` for a bad value."""


@dataclass(frozen=True)
class Context:
    """What a study fixes for every method: the trained model's checkpoint (``final_epoch``),
    GradSimCore's early checkpoints, the gradient column magnitude methods rank by, the seed,
    the subset fractions (a greedy method may stop at the largest one's budget) and source
    training's learning rate (GLISTER's default step, as DeepCore takes its ``--lr``)."""

    final_epoch: int
    factor_epochs: tuple[int, ...]
    norm: str
    seed: int
    fractions: tuple[float, ...] = (1.0,)  # the study's subset fractions: how far a greedy order must go
    lr: float = 0.1  # train.lr


@dataclass(frozen=True)
class Inputs:
    """What a method reads: ``columns`` (besides ``sample_id, label, epoch``) of ``table`` at
    checkpoints ``epochs``; ``by_class`` methods get one class's rows at a time, so the score
    stage can spread classes over workers.

    Two inputs the gradient stage computes only when a configured method declares them:
    ``validation`` adds the validation split's rows of the same columns at the trained model
    (a ``split`` column then says ``train`` or ``val``; by-class methods get their class's), and
    ``table="perturbations"`` is DeepFool's perturbation table, computed with the attack's
    ``table_settings`` (one table per distinct setting)."""

    columns: tuple[str, ...]
    epochs: tuple[int, ...]
    table: str = "gradients"
    by_class: bool = False
    validation: bool = False
    table_settings: tuple[tuple[str, Any], ...] = ()


class SelectionMethod(ABC):
    """Scores samples, then selects ``fraction`` of the scored rows under a budget."""

    name: str = ""
    default_budget: str = "global"
    Params: ClassVar[type] = NoParams

    @classmethod
    def from_study(cls, params: Any, context: Context) -> SelectionMethod:
        """The method as a study configures it: its ``Params`` and the study's context."""
        return cls()

    @abstractmethod
    def inputs(self) -> Inputs:
        """The table columns and checkpoints :meth:`score` reads."""

    def settings(self) -> dict[str, Any]:
        """Everything the scores depend on (a change re-scores the method): by default the
        public attributes set by the constructor."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()
                if not k.startswith("_") and not k.endswith("_")}

    @property
    def ranking(self) -> str | None:
        """Name of the ordering the scores define (label entropy of its top-k); None when the
        scores carry no ordering (Random). Methods that share an ordering share the name."""
        return self.name

    def analysis_tables(self) -> dict[str, pd.DataFrame]:
        """Side tables of the last :meth:`score` call, by table kind (written under analysis/)."""
        return {}

    @abstractmethod
    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        """One row per sample: ``sample_id, label, score`` sorted by sample_id."""

    def pick(self, scores: pd.DataFrame, k: int, rng: np.random.Generator) -> np.ndarray:
        """k sample_ids from one pool; default: highest score, ties to the lower sample_id."""
        return top_k(scores, k)

    def select(self, scores: pd.DataFrame, fraction: float, seed: int, budget: str | None = None) -> np.ndarray:
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


# Where DeepCore's code departs from its paper, the paper's method is the default and
# ``variant="deepcore"`` reproduces DeepCore's numbers (each method's docstring says how).
Variant = Literal["paper", "deepcore"]


def check_variant(variant: str) -> None:
    if variant not in ("paper", "deepcore"):
        raise ValueError(f"variant must be 'paper' or 'deepcore', got {variant!r}")


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


def at_epoch(table: pd.DataFrame, epoch: int | None) -> pd.DataFrame:
    """Rows of one checkpoint: ``epoch``, or the last epoch present when None."""
    if "epoch" not in table.columns:
        return table
    chosen = int(table["epoch"].max()) if epoch is None else epoch
    rows = table[table["epoch"] == chosen]
    if rows.empty:
        raise ValueError(f"no rows at epoch {chosen}; epochs present: {sorted(table['epoch'].unique().tolist())}")
    return rows


def need_columns(table: pd.DataFrame, columns: tuple[str, ...], method: str) -> None:
    """Fail naming the columns ``method`` needs that ``table`` lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{method} needs columns {missing}; columns present: {list(table.columns)}")


def score_frame(rows: pd.DataFrame, score: np.ndarray) -> pd.DataFrame:
    """The standard score table, sorted by sample_id."""
    out = pd.DataFrame({"sample_id": rows["sample_id"].to_numpy(np.int64), "label": rows["label"].to_numpy(np.int64),
                        "score": np.asarray(score, dtype=np.float64)})
    return out.sort_values("sample_id", kind="stable").reset_index(drop=True)


def params_fields(cls: type[SelectionMethod]) -> tuple[str, ...]:
    """The parameter names a method declares (its ``Params`` dataclass fields)."""
    return tuple(f.name for f in dataclasses.fields(cls.Params))


METHODS: Registry[type[SelectionMethod]] = Registry("selection method")
