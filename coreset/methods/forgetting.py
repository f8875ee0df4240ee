"""Forgetting (Toneva et al. 2019, "An empirical study of example forgetting"; DeepCore's
``Forgetting``), from the correctness table source training records (``source/correctness/``:
each image's correctness in the training forward pass of every epoch it was presented).

A forgetting event is a presentation at which an image that was classified correctly at its
previous presentation is misclassified. The score is the number of events over source
training; the subset is the most forgotten images (top-k, ties to the lower sample_id). The
paper counts an image never classified correctly as forgotten infinitely often, the most
forgettable of all: its score here is the number of epochs, above any count that can occur.
DeepCore's code starts every image "incorrect" and counts only events, so never-learned images
score 0 with the unforgettable ones: ``variant="deepcore"``. Default budget: class-balanced
(DeepCore's ``--balance True``).

DeepCore counts over its own short selection training; here the events are counted over the
study's source training, whose every epoch the table holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from coreset.methods.base import (
    METHODS,
    Context,
    Inputs,
    SelectionMethod,
    Variant,
    check_variant,
    need_columns,
    score_frame,
)


@dataclass(frozen=True)
class ForgettingParams:
    """``variant``: ``deepcore`` scores never-learned images 0 instead of above every count."""

    variant: Variant = "paper"

    def validate(self, prefix: str) -> None:
        """The config engine checks the Literal."""


def forgetting_events(rows: pd.DataFrame) -> pd.DataFrame:
    """Per sample_id: ``events`` (correct → incorrect between consecutive presentations) and
    ``learned`` (correct at some presentation)."""
    rows = rows.sort_values(["sample_id", "epoch"], kind="stable")
    ids = rows["sample_id"].to_numpy(np.int64)
    correct = rows["correct"].to_numpy(bool)
    same = np.r_[False, ids[1:] == ids[:-1]]  # a previous presentation of the same image
    forgotten = same & np.r_[False, correct[:-1]] & ~correct
    out = pd.DataFrame({"sample_id": ids, "label": rows["label"].to_numpy(np.int64), "events": forgotten,
                        "learned": correct})
    return out.groupby("sample_id", sort=True).agg(label=("label", "first"), events=("events", "sum"),
                                                   learned=("learned", "any")).reset_index()


@METHODS.register("forgetting")
class Forgetting(SelectionMethod):
    """Forgetting events over source training; the most forgotten images."""

    name = "forgetting"
    default_budget = "class_balanced"
    Params = ForgettingParams

    def __init__(self, variant: Variant = "paper") -> None:
        check_variant(variant)
        self.variant = variant

    @classmethod
    def from_study(cls, params: ForgettingParams, context: Context) -> Forgetting:
        return cls(variant=params.variant)

    def inputs(self) -> Inputs:
        return Inputs(columns=("correct",), epochs=(), table="correctness")

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        need_columns(table, ("sample_id", "label", "epoch", "correct"), self.name)
        counts = forgetting_events(table)
        score = counts["events"].to_numpy(np.float64)
        if self.variant == "paper":
            score[~counts["learned"].to_numpy()] = table["epoch"].nunique()
        return score_frame(counts, score)
