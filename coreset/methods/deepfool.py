"""DeepFool active learning (Ducoffe & Precioso 2018, "Adversarial active learning for deep
networks: a margin based approach", DFAL; DeepCore's ``DeepFool``).

An image's distance to the decision boundary is estimated by the size of the smallest
adversarial perturbation DeepFool finds for it (:mod:`coreset.gradients.deepfool`), and the
images closest to the boundary, the smallest perturbations, are selected. The attack needs the
model and the images, so the gradient stage computes it (the ``perturbations/`` table, only when
this method is configured, at the trained model) and the method ranks from that table: the
score is the size negated, so the highest-first selection keeps the smallest. Class-balanced
by default, as DeepCore's runs are (its class defaults to ``balance=False``, but main.py passes
``--balance``, True by default); DFAL queries an unlabelled pool and so ranks globally
(``score.budget: global``). DFAL also adds each queried image's adversarial counterpart with the
same label to the training set, which a coreset, a subset of given images, does not.

Default (the paper's DeepFool): each step overshoots by 1 + η, η = 0.02 (the DeepFool paper's
value, which carries the point across a boundary the linearisation lands exactly on), the
perturbation's l2 size, ``candidates`` top-scoring classes tested per step (10, the DeepFool
authors' code; every class at C ≤ 10), ``max_iter`` 50 (DeepCore's, and that code's).

DeepCore attacks the model of its short selection training (``--selection_epochs``); here it is
the study's trained model (``gradients.final_epoch``), as for every method of the gradient table.

``variant="deepcore"`` reproduces DeepCore's code, which steps x_{i+1} = x_i + r_i with no
overshoot, tests every class at every step (1000 backward passes a step at ImageNet), and
scores the squared size ‖r‖² (the same order; the score is −‖r‖²).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from coreset.config_engine import at_least
from coreset.errors import ConfigError
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

OVERSHOOT = 0.02  # the DeepFool paper's η


@dataclass(frozen=True)
class DeepFoolParams:
    """``max_iter``: DeepFool steps at most (50); ``candidates``: classes tested per step, the
    top-scoring ones (0: every class; the ``deepcore`` variant tests every class);
    ``variant``: ``deepcore`` steps without overshoot, as DeepCore's code does."""

    max_iter: int = 50
    candidates: int = 10
    variant: Variant = "paper"

    def validate(self, prefix: str) -> None:
        at_least(f"{prefix}max_iter", self.max_iter, 1)
        if self.candidates < 0 or self.candidates == 1:
            raise ConfigError(f"{prefix}candidates must be 0 (every class) or at least 2, got {self.candidates}")


@METHODS.register("deepfool")
class DeepFool(SelectionMethod):
    """The images with the smallest DeepFool perturbation at the trained model."""

    name = "deepfool"
    default_budget = "class_balanced"
    Params = DeepFoolParams

    def __init__(self, epoch: int, max_iter: int = 50, candidates: int = 10, variant: Variant = "paper") -> None:
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        if candidates < 0 or candidates == 1:
            raise ValueError(f"candidates must be 0 or at least 2, got {candidates}")
        check_variant(variant)
        self.epoch = epoch
        self.max_iter = max_iter
        self.candidates = candidates
        self.variant = variant

    @classmethod
    def from_study(cls, params: DeepFoolParams, context: Context) -> DeepFool:
        return cls(context.final_epoch, params.max_iter, params.candidates, params.variant)

    @property
    def attack(self) -> tuple[tuple[str, Any], ...]:
        """The settings the perturbation table is computed with (:func:`coreset.gradients.deepfool.deepfool`)."""
        if self.variant == "deepcore":
            return (("max_iter", self.max_iter), ("overshoot", 0.0), ("candidates", 0))
        return (("max_iter", self.max_iter), ("overshoot", OVERSHOOT), ("candidates", self.candidates))

    def inputs(self) -> Inputs:
        return Inputs(columns=("perturbation",), epochs=(self.epoch,), table="perturbations",
                      table_settings=self.attack)

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        need_columns(table, ("perturbation",), self.name)
        rows = at_epoch(table, self.epoch)
        size = rows["perturbation"].to_numpy(np.float64)
        return score_frame(rows, -(size * size) if self.variant == "deepcore" else -size)
