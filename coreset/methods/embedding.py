"""What the embedding-space methods share: the penultimate features ``emb`` (or another factor
column, such as the probabilities behind ``err``) of one checkpoint
(the trained model unless ``epoch`` names one of ``gradients.factor_epochs``), one class at a
time (``by_class`` inputs), stacked into a float64 (n, d) array in sample_id order, so an
argmax/argmin tie goes to the lower sample_id."""
from __future__ import annotations

import dataclasses
from abc import abstractmethod
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

    @abstractmethod
    def class_scores(self, emb: np.ndarray) -> np.ndarray:
        """Scores of one class's rows (in sample_id order) from their matrix."""

    def class_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows of the method's checkpoint in sample_id order (argmin/argmax ties: lower id)."""
        need_columns(table, self.columns, self.name)
        return at_epoch(table, self.epoch).sort_values("sample_id", kind="stable")

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        rows = self.class_rows(table)
        parts = []
        for _, group in rows.groupby("label", sort=True):  # one class stacked at a time: memory
            parts.append(score_frame(group, self.class_scores(self.matrix(group))))
        return pd.concat(parts, ignore_index=True).sort_values("sample_id").reset_index(drop=True)


def greedy_position_scores(order: np.ndarray) -> np.ndarray:
    """Scores that rank a class in a greedy order: the i-th pick (0-based) of n scores 1 − i/n, so
    every top-k of the class is the greedy method's first k, and under a global budget the top-k
    takes about the same share of every class."""
    n = len(order)
    scores = np.empty(n)
    scores[order] = 1.0 - np.arange(n) / n
    return scores
