"""What the embedding-space methods share: the penultimate features ``emb`` (or another factor
column, such as the probabilities behind ``err``) of one checkpoint
(the trained model unless ``epoch`` names one of ``gradients.factor_epochs``), one class at a
time (``by_class`` inputs), stacked into a float64 (n, d) array in sample_id order, so an
argmax/argmin tie goes to the lower sample_id."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from coreset.methods.base import Context, Inputs, SelectionMethod, at_epoch, need_columns, score_frame
from coreset.methods.checkpoints import model_checkpoint
from coreset.similarity import stack_list_column


@dataclass(frozen=True)
class EmbeddingParams:
    """``epoch``: the checkpoint whose features are used (unset: the trained model)."""

    epoch: int | None = None

    def validate(self, prefix: str) -> None:
        """``epoch`` is checked against the study's checkpoints when the method is built."""


class EmbeddingMethod(SelectionMethod):
    """Scores each class from its (n_c, d) matrix of ``column`` (the features by default)."""

    default_budget = "class_balanced"
    Params: type = EmbeddingParams
    column = "emb"

    def __init__(self, epoch: int | None = None) -> None:
        self.epoch = epoch

    @classmethod
    def from_study(cls, params: EmbeddingParams, context: Context) -> EmbeddingMethod:
        """The checkpoint resolved against the study; a subclass's other params passed as they are."""
        others = {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.name != "epoch"}
        return cls(epoch=model_checkpoint(cls.name, params.epoch, context), **others)

    @property
    def columns(self) -> tuple[str, ...]:
        """The factor columns :meth:`matrix` reads."""
        return (self.column,)

    def inputs(self) -> Inputs:
        return Inputs(columns=self.columns, epochs=(self.epoch,) if self.epoch is not None else (), by_class=True)

    def matrix(self, group: pd.DataFrame) -> np.ndarray:
        """One class's rows as a float64 (n_c, d) array."""
        return stack_list_column(group[self.column]).astype(np.float64)

    def class_scores(self, emb: np.ndarray) -> np.ndarray:
        """Scores of one class's rows (in sample_id order) from their matrix: what a subclass
        defines, unless it scores from the rows themselves (:meth:`group_scores`)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither class_scores nor group_scores")

    def class_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows of the method's checkpoint in sample_id order (argmin/argmax ties: lower id)."""
        need_columns(table, self.columns, self.name)
        return at_epoch(table, self.epoch).sort_values("sample_id", kind="stable")

    def group_scores(self, group: pd.DataFrame) -> np.ndarray:
        """One class's scores from its rows: :meth:`class_scores` of its :meth:`matrix`."""
        return self.class_scores(self.matrix(group))

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        rows = self.class_rows(table)
        parts = []
        for _, group in rows.groupby("label", sort=True):  # one class stacked at a time: memory
            parts.append(score_frame(group, self.group_scores(group)))
        return pd.concat(parts, ignore_index=True).sort_values("sample_id").reset_index(drop=True)


def greedy_position_scores(order: np.ndarray, n: int | None = None) -> np.ndarray:
    """Scores that rank a class of ``n`` (default ``len(order)``) in a greedy order: the i-th pick
    (0-based) scores 1 − i/n, so every top-k of the class is the greedy method's first k, and
    under a global budget the top-k takes about the same share of every class. An order that
    stopped early (:func:`prefix_length`) leaves the rest at 0: unranked, below every pick."""
    n = len(order) if n is None else n
    scores = np.zeros(n)
    scores[order] = 1.0 - np.arange(len(order)) / n
    return scores


def prefix_length(n: int, max_fraction: float) -> int:
    """How many greedy picks a class of ``n`` needs for every fraction up to ``max_fraction``: its
    budget there is at most ⌈f·n⌉ + 1, class-balanced (largest remainder of the half-up k) or
    global (top-k of scores 1 − i/n over classes), so a greedy order may stop there."""
    return min(n, math.ceil(max_fraction * n) + 1)
