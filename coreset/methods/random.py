"""Random: the uniform baseline (gradient-magnitude paper, Sec. 3.3 a)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from coreset.methods.base import METHODS, Context, Inputs, SelectionMethod, at_epoch, score_frame


@METHODS.register("random")
class Random(SelectionMethod):
    """Score is a constant 0 (it carries no information); selection is uniform without
    replacement with ``numpy.random.default_rng(seed)``."""

    name = "random"

    def __init__(self, epoch: int | None = None) -> None:
        self.epoch = epoch

    @classmethod
    def from_study(cls, params: object, context: Context) -> Random:
        return cls(epoch=context.final_epoch)

    def inputs(self) -> Inputs:
        return Inputs(columns=(), epochs=(self.epoch,) if self.epoch is not None else ())

    @property
    def ranking(self) -> None:
        return None

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        rows = at_epoch(table, self.epoch)
        return score_frame(rows, np.zeros(len(rows)))

    def pick(self, scores: pd.DataFrame, k: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(scores["sample_id"].to_numpy(np.int64), size=k, replace=False)
