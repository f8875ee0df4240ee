"""Coverage-centric Coreset Selection (Zheng et al. 2023, "Coverage-centric coreset selection
for high pruning rates", Algorithm 1).

CCS keeps the score of another method, ``difficulty`` (higher = harder; default EL2N), run with
that method's default parameters, and changes how the subset is drawn from the pool (the whole
train split under the global budget, the paper's; one class under ``class_balanced``):

1. prune the hardest ⌊βn + ½⌋ images (likely mislabelled or ambiguous);
2. cut the remaining score range into ``strata`` equal-width intervals;
3. visit the non-empty strata from the smallest up (ties: lower interval first) and draw
   min(|B|, ⌊m / #strata left⌋) images uniformly from each, m being the budget not yet spent.

Step 3 spends exactly k whenever k does not exceed the images left after pruning (each
stratum left is at least as large as the one before). When k does, the subset is every kept
image plus the pruned ones from the least hard up, as for Non-extreme Max-Gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from coreset.config_engine import at_least, choice, in_range
from coreset.methods.base import METHODS, Context, Inputs, SelectionMethod, top_k
from coreset.methods.budget import half_up


@dataclass(frozen=True)
class CCSParams:
    """``difficulty``: the method whose score orders the images; ``beta``: the hardest share pruned
    (the paper tunes it per pruning rate, 0 to 0.4); ``strata``: the paper's k = 50."""

    difficulty: str = "el2n"
    beta: float = 0.1
    strata: int = 50

    def validate(self, prefix: str) -> None:
        ranked = [m for m in METHODS.names() if m not in ("ccs", "random")]
        choice(f"{prefix}difficulty", self.difficulty, ranked)
        in_range(f"{prefix}beta", self.beta, 0.0, 1.0, lo_open=False, hi_open=True)
        at_least(f"{prefix}strata", self.strata, 1)


@METHODS.register("ccs")
class CCS(SelectionMethod):
    """Stratified sampling over a difficulty score with the hardest β pruned."""

    name = "ccs"
    Params = CCSParams

    def __init__(self, difficulty: SelectionMethod, beta: float = 0.1, strata: int = 50) -> None:
        if not 0.0 <= beta < 1.0 or strata < 1:
            raise ValueError(f"beta must lie in [0, 1) and strata be >= 1, got {beta}, {strata}")
        self.difficulty = difficulty
        self.beta = beta
        self.strata = strata

    @classmethod
    def from_study(cls, params: CCSParams, context: Context) -> CCS:
        inner = METHODS.get(params.difficulty)
        return cls(inner.from_study(inner.Params(), context), beta=params.beta, strata=params.strata)

    def inputs(self) -> Inputs:
        return self.difficulty.inputs()

    def settings(self) -> dict[str, Any]:
        return {"difficulty": self.difficulty.name, "difficulty_settings": self.difficulty.settings(),
                "beta": self.beta, "strata": self.strata}

    @property
    def ranking(self) -> str | None:
        """The difficulty method's ordering (CCS samples from it rather than taking its top)."""
        return self.difficulty.ranking

    def analysis_tables(self) -> dict[str, pd.DataFrame]:
        return self.difficulty.analysis_tables()

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        return self.difficulty.score(table)

    def pick(self, scores: pd.DataFrame, k: int, rng: np.random.Generator) -> np.ndarray:
        ranked = top_k(scores, len(scores))  # hardest first, ties to the lower sample_id
        n_hard = half_up(self.beta * len(ranked))
        hard, kept = ranked[:n_hard], ranked[n_hard:]
        if k >= len(kept):
            return np.concatenate([kept, hard[::-1][: k - len(kept)]])
        s = scores.set_index("sample_id")["score"].loc[kept].to_numpy(np.float64)
        span = s.max() - s.min()
        bins = np.zeros(len(s), dtype=np.int64) if span == 0 else \
            np.minimum(((s - s.min()) / span * self.strata).astype(np.int64), self.strata - 1)
        strata = [kept[bins == b] for b in np.unique(bins)]
        strata.sort(key=len)  # stable: equal sizes keep the lower interval first
        chosen, left = [], k
        for i, stratum in enumerate(strata):
            take = min(len(stratum), left // (len(strata) - i))
            chosen.append(rng.choice(np.sort(stratum), size=take, replace=False))
            left -= take
        return np.concatenate(chosen).astype(np.int64)
