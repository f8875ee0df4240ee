"""EL2N and GraNd (Paul et al. 2021, "Deep learning on a data diet"; DeepCore's ``GraNd``).

Both score a sample early in training by how much it still pulls on the model and keep the
highest (the hard images; ties to the lower sample_id), at one checkpoint ``epoch`` (one of
``gradients.factor_epochs``, default the latest):

- EL2N: ‖p − onehot(y)‖₂ = ‖err‖₂, from the table's ``err`` column.
- GraNd: ‖∇_w ℓ‖₂. ``gradient="last"`` (DeepCore's: the last layer, weight and bias) reads the
  engine's closed form ``l2_last`` = ‖err‖·√(‖h‖² + 1) of err ⊗ [h; 1], which the gradient stage
  writes at every checkpoint; ``gradient="all"`` reads ``l2_all``, every parameter, which the
  engine computes only at the trained model (``gradients.final_epoch``), so it scores there.

Differences from the paper and DeepCore: both average the score over several independently
trained models (the paper 10 initialisations, DeepCore ``repeat=10``); a study trains one
source model, so this is one draw of that average. Default budget: global for EL2N (the
paper's, DeepCore has no EL2N), class-balanced for GraNd (DeepCore's ``--balance True``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from coreset.errors import ConfigError
from coreset.methods.base import METHODS, Context, Inputs, SelectionMethod, at_epoch, need_columns, score_frame
from coreset.methods.checkpoints import early_checkpoint
from coreset.similarity import stack_list_column


@dataclass(frozen=True)
class EL2NParams:
    """``epoch``: the early checkpoint scored (unset: the latest of ``gradients.factor_epochs``)."""

    epoch: int | None = None

    def validate(self, prefix: str) -> None:
        """``epoch`` is checked against the study's checkpoints when the method is built."""


@dataclass(frozen=True)
class GraNdParams:
    """``epoch`` as for EL2N (only with ``gradient="last"``); ``gradient``: the last layer's
    norm (``l2_last``) or every parameter's (``l2_all``, at the trained model)."""

    epoch: int | None = None
    gradient: Literal["last", "all"] = "last"

    def validate(self, prefix: str) -> None:
        if self.gradient == "all" and self.epoch is not None:
            raise ConfigError(f"{prefix}epoch applies to gradient=last; the all-parameter norm l2_all exists "
                              f"only at gradients.final_epoch")


class _EarlyScore(SelectionMethod):
    """A score column (or one computed from factors) at one checkpoint; top-k."""

    def __init__(self, epoch: int | None = None) -> None:
        self.epoch = epoch

    def _rows(self, table: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
        need_columns(table, columns, self.name)
        rows = at_epoch(table, self.epoch)
        if rows["sample_id"].duplicated().any():
            raise ValueError("gradient table has several rows per sample_id at one epoch")
        return rows


@METHODS.register("el2n")
class EL2N(_EarlyScore):
    """‖err‖₂ at an early checkpoint."""

    name = "el2n"
    Params = EL2NParams

    @classmethod
    def from_study(cls, params: EL2NParams, context: Context) -> EL2N:
        return cls(epoch=early_checkpoint(cls.name, params.epoch, context))

    def inputs(self) -> Inputs:
        return Inputs(columns=("err",), epochs=(self.epoch,) if self.epoch is not None else ())

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        rows = self._rows(table, ("err",))
        err = stack_list_column(rows["err"]).astype(np.float64)
        return score_frame(rows, np.sqrt((err * err).sum(axis=1)))


@METHODS.register("grand")
class GraNd(_EarlyScore):
    """‖∇ℓ‖₂ of the last layer at an early checkpoint, or of every parameter at the trained model."""

    name = "grand"
    default_budget = "class_balanced"
    Params = GraNdParams

    def __init__(self, epoch: int | None = None, gradient: str = "last") -> None:
        if gradient not in ("last", "all"):
            raise ValueError(f"gradient must be 'last' or 'all', got {gradient!r}")
        super().__init__(epoch)
        self.gradient = gradient

    @classmethod
    def from_study(cls, params: GraNdParams, context: Context) -> GraNd:
        if params.gradient == "all":
            return cls(epoch=context.final_epoch, gradient="all")
        return cls(epoch=early_checkpoint(cls.name, params.epoch, context), gradient="last")

    @property
    def column(self) -> str:
        return f"l2_{self.gradient}"

    def inputs(self) -> Inputs:
        return Inputs(columns=(self.column,), epochs=(self.epoch,) if self.epoch is not None else ())

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        rows = self._rows(table, (self.column,))
        norms = rows[self.column].to_numpy(np.float64)
        if not np.all(np.isfinite(norms)):
            where = "at every checkpoint" if self.gradient == "last" else "at the trained model only"
            raise ValueError(f"{self.column} is null or not finite at epoch {self.epoch}: the gradient stage "
                             f"computes it {where}")
        return score_frame(rows, norms)
