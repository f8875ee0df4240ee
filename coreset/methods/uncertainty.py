"""Uncertainty scores (Coleman et al. 2020, "Selection via proxy"; DeepCore's ``Uncertainty``).

The class probabilities come from the gradient table, not from a model: its ``err`` column is
softmax(z) − onehot(y), so p = err + onehot(y). Each score is "higher = more uncertain" and the
subset is the top-k (ties to the lower sample_id):

- least confidence: 1 − max_k p_k;
- entropy: −Σ_k p_k log p_k (0 log 0 = 0);
- margin: 1 − (p_(1) − p_(2)), the two largest probabilities.

They read one checkpoint, ``epoch`` (one of ``gradients.factor_epochs``, default the latest):
DeepCore scores a proxy trained for a few epochs (``--selection_epochs``), not the final model.
Default budget: class-balanced, DeepCore's default (``--balance True``).

Differences from DeepCore's code. Its least confidence ranks by the largest *logit*, which
the table does not hold; the probability is the paper's definition. Without ``--balance`` its
code sorts its scores the other way and keeps the *most* confident images (the paper and its
balanced branch keep the least confident): ``variant="deepcore"`` reproduces that under a
global budget; under a class-balanced one both variants agree.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd

from coreset.methods.base import (
    METHODS,
    Context,
    Inputs,
    SelectionMethod,
    Variant,
    at_epoch,
    check_variant,
    need_columns,
    score_frame,
)
from coreset.methods.checkpoints import early_checkpoint
from coreset.similarity import stack_list_column


@dataclass(frozen=True)
class UncertaintyParams:
    """``epoch``: the early checkpoint scored (unset: the latest of ``gradients.factor_epochs``);
    ``variant``: ``deepcore`` keeps the most confident images under a global budget."""

    epoch: int | None = None
    variant: Variant = "paper"

    def validate(self, prefix: str) -> None:
        """Literal and type checks are the config engine's; ``epoch`` is checked against the study."""


def probabilities(rows: pd.DataFrame) -> np.ndarray:
    """p = err + onehot(y) in float64, clipped to [0, 1] against the factor dtype's rounding."""
    p = stack_list_column(rows["err"]).astype(np.float64)
    labels = rows["label"].to_numpy(np.int64)
    p[np.arange(len(p)), labels] += 1.0
    return np.clip(p, 0.0, 1.0)


class _Uncertainty(SelectionMethod):
    default_budget = "class_balanced"
    Params = UncertaintyParams

    def __init__(self, epoch: int | None = None, variant: Variant = "paper") -> None:
        check_variant(variant)
        self.epoch = epoch
        self.variant = variant

    @classmethod
    def from_study(cls, params: UncertaintyParams, context: Context) -> _Uncertainty:
        return cls(epoch=early_checkpoint(cls.name, params.epoch, context), variant=params.variant)

    def inputs(self) -> Inputs:
        return Inputs(columns=("err",), epochs=(self.epoch,) if self.epoch is not None else ())

    @staticmethod
    @abstractmethod
    def uncertainty(p: np.ndarray) -> np.ndarray:
        """One score per row of probabilities p (n, C); higher = more uncertain."""

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        need_columns(table, ("err",), self.name)
        rows = at_epoch(table, self.epoch)
        return score_frame(rows, self.uncertainty(probabilities(rows)))

    def select(self, scores: pd.DataFrame, fraction: float, seed: int, budget: str | None = None) -> np.ndarray:
        if self.variant == "deepcore" and (budget or self.default_budget) == "global":
            scores = scores.assign(score=-scores["score"])
        return super().select(scores, fraction, seed, budget)


@METHODS.register("uncertainty_least_confidence")
class LeastConfidence(_Uncertainty):
    """1 − max_k p_k."""

    name = "uncertainty_least_confidence"

    @staticmethod
    def uncertainty(p: np.ndarray) -> np.ndarray:
        return 1.0 - p.max(axis=1)


@METHODS.register("uncertainty_entropy")
class Entropy(_Uncertainty):
    """−Σ_k p_k log p_k; DeepCore adds 1e-6 inside the log, which only shifts near-zero terms."""

    name = "uncertainty_entropy"

    @staticmethod
    def uncertainty(p: np.ndarray) -> np.ndarray:
        logs = np.log(p, out=np.zeros_like(p), where=p > 0)
        return -(p * logs).sum(axis=1)


@METHODS.register("uncertainty_margin")
class Margin(_Uncertainty):
    """1 − (p_(1) − p_(2)): a small gap between the two likeliest classes is uncertain."""

    name = "uncertainty_margin"

    @staticmethod
    def uncertainty(p: np.ndarray) -> np.ndarray:
        top2 = -np.partition(-p, 1, axis=1)[:, :2]
        return 1.0 - (top2[:, 0] - top2[:, 1])
