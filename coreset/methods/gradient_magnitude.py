"""Gradient-magnitude selection (gradient-magnitude importance paper, Sec. 3.3 b-d).

All three score a sample by one per-sample gradient norm column (default ``l2_last``; any
``<norm>_<group>`` column such as ``l2_weights`` works the same) at one checkpoint (default:
the last epoch in the table) and differ only in how they pick k of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from coreset.config_engine import in_range
from coreset.methods.base import METHODS, Context, Inputs, SelectionMethod, at_epoch, score_frame, top_k
from coreset.methods.budget import half_up

DEFAULT_NORM = "l2_last"


class _NormScored(SelectionMethod):
    def __init__(self, norm: str = DEFAULT_NORM, epoch: int | None = None) -> None:
        self.norm = norm
        self.epoch = epoch

    @classmethod
    def from_study(cls, params: Any, context: Context) -> _NormScored:
        return cls(norm=context.norm, epoch=context.final_epoch)

    def inputs(self) -> Inputs:
        return Inputs(columns=(self.norm,), epochs=(self.epoch,) if self.epoch is not None else ())

    @property
    def ranking(self) -> str:
        """The three magnitude methods order samples the same way: by the norm column."""
        return self.norm

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        if self.norm not in table.columns:
            raise ValueError(f"norm column {self.norm!r} not in the gradient table; "
                             f"columns present: {list(table.columns)}")
        rows = at_epoch(table, self.epoch)
        if rows["sample_id"].duplicated().any():
            raise ValueError("gradient table has several rows per sample_id at one epoch")
        norms = rows[self.norm].to_numpy(np.float64)
        if not np.all(np.isfinite(norms)) or np.any(norms < 0):
            raise ValueError(f"norm column {self.norm!r} must be finite and non-negative")
        return score_frame(rows, norms)


@METHODS.register("max_gradient")
class MaxGradient(_NormScored):
    """Max-Gradient: the k largest norms (ties to the lower sample_id)."""

    name = "max_gradient"


@dataclass(frozen=True)
class NonExtremeParams:
    drop_fraction: float = 0.05  # the most extreme share of the pool left out before top-k

    def validate(self, prefix: str) -> None:
        in_range(f"{prefix}drop_fraction", self.drop_fraction, 0.0, 1.0, lo_open=False, hi_open=True)


@METHODS.register("nonextreme_max_gradient")
class NonExtremeMaxGradient(_NormScored):
    """Non-extreme Max-Gradient: drop the top ``drop_fraction`` of the pool, then top-k.

    The pool is everything under a global budget and one class under a class-balanced one;
    ``floor(drop_fraction·n + 1/2)`` samples are dropped. When k exceeds what is left, the
    subset is filled from the dropped samples in ascending order of norm (least extreme
    first), so it always has exactly k samples.
    """

    name = "nonextreme_max_gradient"
    Params = NonExtremeParams

    def __init__(self, norm: str = DEFAULT_NORM, epoch: int | None = None, drop_fraction: float = 0.05) -> None:
        super().__init__(norm, epoch)
        if not 0.0 <= drop_fraction < 1.0:
            raise ValueError(f"drop_fraction must lie in [0, 1), got {drop_fraction}")
        self.drop_fraction = drop_fraction

    @classmethod
    def from_study(cls, params: NonExtremeParams, context: Context) -> NonExtremeMaxGradient:
        return cls(norm=context.norm, epoch=context.final_epoch, drop_fraction=params.drop_fraction)

    def pick(self, scores: pd.DataFrame, k: int, rng: np.random.Generator) -> np.ndarray:
        ranked = top_k(scores, len(scores))
        n_drop = half_up(self.drop_fraction * len(ranked))
        kept, dropped = ranked[n_drop:], ranked[:n_drop]
        return np.concatenate([kept[:k], dropped[::-1][: max(0, k - len(kept))]])


@METHODS.register("gradient_cdf")
class GradientCDF(_NormScored):
    """Gradient-CDF: k samples without replacement, successively with P(i) ∝ norm_i.

    Exact via Efraimidis–Spirakis: key_i = u_i^(1/w_i) with u_i ~ U(0, 1], top-k keys;
    computed as log(u_i)/w_i to stay finite for small norms. Zero-norm samples have
    probability 0, so they come only after all positive ones, in uniformly random order.
    """

    name = "gradient_cdf"

    def pick(self, scores: pd.DataFrame, k: int, rng: np.random.Generator) -> np.ndarray:
        w = scores["score"].to_numpy(np.float64)
        u = 1.0 - rng.random(len(w))  # (0, 1]
        positive = w > 0
        log_key = np.full(len(w), -np.inf)
        log_key[positive] = np.log(u[positive]) / w[positive]
        order = np.lexsort((-u, -log_key, ~positive))
        return scores["sample_id"].to_numpy(np.int64)[order[:k]]
