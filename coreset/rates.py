"""Measured rates: how long one unit of each kind of work took, and where. Every estimate
of the plan (``coreset/planning.py``) is a count of work times one of these rates, never a
constant in the code. A stage that ran records the rates it measured in ``<root>/rates.json``
(:func:`record_rates`); ``--plan --calibrate`` measures them on a few batches of the real
work instead (``coreset/calibrate.py``).

Keys (``per``: what one unit of the rate is):

* ``train.image``: a source epoch's wall time per training image (training, the evaluations,
  the probe's gradients, the checkpoint and table writes); ``train.start``: per stage start
  (workers, data, model).
* ``gradients.final_row`` / ``gradients.factor_row``: per row of a shard at the final
  checkpoint (every norm) / at a factor-only checkpoint (and of the validation split's rows),
  writing included; ``gradients.perturbation_row``: per train image of DeepFool's perturbation
  table; ``gradients.start``.
* ``score.<method>``: per class for a method that scores by class (one class task), per row
  for one that scores the whole table.
* ``retrain.<model>.step``: per optimiser step of a trial, its evaluations shared over its
  steps; ``retrain.pack_start``: per pack of trials (its worker process, imports and data
  load: every pack is a fresh Ray worker); ``retrain.start``: per stage (Tune's start).
* ``report.figure``: per figure drawn.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from coreset import layout
from coreset.storage import StudyRoot


@dataclass(frozen=True)
class Rate:
    seconds: float  # per one ``per``
    per: str  # "image", "row", "class", "step", "trial", "figure", "start"
    device: str  # where it was measured: "cpu" or "cuda"
    threads: int  # torch threads of the unit that measured it
    source: str = "recorded"  # or "calibrated"

    def with_source(self, source: str) -> Rate:
        return Rate(self.seconds, self.per, self.device, self.threads, source)


def rate(seconds: float, count: float, per: str, device: str, threads: int) -> Rate:
    """``seconds`` spent on ``count`` units of ``per``, as seconds per unit."""
    return Rate(max(seconds, 0.0) / max(count, 1e-12), per, device, threads)


def read_rates(root: StudyRoot) -> dict[str, Rate]:
    if not root.exists(layout.RATES):
        return {}
    return {k: Rate(**v) for k, v in json.loads(root.read_bytes(layout.RATES)).items()}


def record_rates(root: StudyRoot, new: dict[str, Rate]) -> None:
    """Merge ``new`` into the root's rates (the latest measurement of a key wins). Only the
    root's lease holder writes, one stage at a time, so read-merge-write does not race."""
    merged = {**read_rates(root), **new}
    root.write_bytes(layout.RATES, json.dumps({k: asdict(v) for k, v in sorted(merged.items())}, indent=2).encode())
