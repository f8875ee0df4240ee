"""The tables the gradient stage writes only for the configured methods that read them (their
:class:`~coreset.methods.Inputs`), beside the gradient table, with the same sharding, atomic
writes and resume by file listing:

* ``validation/``: the validation split's forward-only gradient rows (``err``, ``emb``, loss) at
  the trained model, GLISTER's validation set. One file per class unit of the gradient table
  (:func:`coreset.stages.score.class_units`), so a by-class score task reads its classes'
  validation rows from one file beside its own shards. Units whose classes have no
  validation rows have no file (the manifest lists those that do).
* ``perturbations/<setting>/``: DeepFool's perturbation of every train image at the trained
  model (:mod:`coreset.gradients.deepfool`), one table per distinct attack setting, its shards
  those of the gradient table. It needs the model and the images, so it is computed here;
  DeepFool's method then ranks from the table.

Adding such a method to a finished study computes only these tables' files: the gradient
table's manifest does not mention them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from coreset import layout
from coreset.config import StudyConfig
from coreset.data import Datasets
from coreset.errors import StageError
from coreset.gradients.deepfool import deepfool
from coreset.models import Classifier
from coreset.stages import score
from coreset.stages.shard_task import ShardTask
from coreset.tables import to_arrow


def method_tasks(cfg: StudyConfig, final: int, shards: list[np.ndarray], labels: list[list[int]],
                 val: pd.Series) -> list[ShardTask]:
    """Every file of the tables the configured methods read (none when none does); ``val``: the
    validation split's labels by sample id, ``labels``: each gradient shard's label range."""
    readers = score.configured_inputs(cfg, final)
    tasks: list[ShardTask] = []
    if any(i.validation for i in readers.values()):
        if val.empty:
            names = ", ".join(n for n, i in readers.items() if i.validation)
            raise StageError(f"{names} reads the validation split, which data.val_fraction={cfg.data.val_fraction} "
                             f"leaves empty")
        tasks += validation_tasks(labels, val, final)
    for settings in score.perturbation_settings(readers):
        tasks += [ShardTask(final, s, ids, False, "perturbations", settings) for s, ids in enumerate(shards)]
    return tasks


def validation_tasks(labels: list[list[int]], val: pd.Series, final: int) -> list[ShardTask]:
    """One task per class unit with validation rows: those whose label lies in the unit's range."""
    ids, classes = val.index.to_numpy(np.int64), val.to_numpy(np.int64)
    tasks = []
    for unit in score.class_units({"shard_labels": labels}):
        lowest, highest = labels[unit[0]][0], labels[unit[-1]][1]
        mine = np.sort(ids[(classes >= lowest) & (classes <= highest)])
        if len(mine):
            tasks.append(ShardTask(final, unit[0], mine, False, "validation"))
    return tasks


def manifests(cfg: StudyConfig, tasks: list[ShardTask]) -> dict[str, dict[str, Any]]:
    """What each of these tables is computed with, by manifest path (a re-run with other
    settings is refused, as for the gradient table)."""
    out: dict[str, dict[str, Any]] = {}
    for table in sorted({(t.table, t.settings) for t in tasks}):
        mine = [t for t in tasks if (t.table, t.settings) == table]
        entry: dict[str, Any] = {"epoch": mine[0].epoch, "rows": int(sum(len(t.ids) for t in mine)),
                                 "files": [t.shard for t in mine]}
        if table[0] == "validation":
            entry["factor_dtype"] = cfg.gradients.factor_dtype
        else:
            entry["settings"] = dict(table[1])
        out[layout.table_manifest(mine[0].folder)] = entry
    return out


def compute_perturbations(model: Classifier, datasets: Datasets, task: ShardTask, batch_size: int,
                          device: torch.device) -> pa.Table:
    """DeepFool's perturbation of one shard's images, batch by batch on ``device``."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("sample_id", "label", "perturbation", "iterations",
                                                          "flipped")}
    for x, y, sid in datasets.batches("train", task.ids, batch_size):
        found = deepfool(model, x.to(device), **dict(task.settings))
        for key, values in (("sample_id", sid), ("label", y), ("perturbation", found.size.double()),
                            ("iterations", found.iterations), ("flipped", found.flipped)):
            parts[key].append(values.cpu().numpy())
    columns = {k: np.concatenate(v) for k, v in parts.items()}
    columns["epoch"] = np.full(len(task.ids), task.epoch, dtype=np.int64)
    return to_arrow(pa.table(columns), "perturbation")
