"""A coreset leaves the study as a pack: ``jobs/pack.py --root STUDY --subset METHOD FRACTION
SEED --out URI`` (the Ray part is :mod:`coreset.cluster.pack`).

The subset is the one retraining trains on (:func:`coreset.stages.retrain.recorded_subset`:
the score stage's recorded selection), its images read from the study's own data (a folder's
files, or a pack's byte ranges: the original bytes either way, checked against the data the
study recorded). The result is a pack like any other (``coreset-pack/1``, resumable, usable
as ``data.root``): its train split is the subset renumbered ``0..k-1`` in sample-id order,
its test split the study's (what a model trained on the coreset is evaluated on); its
manifest's ``subset`` entry says which study, method, fraction, seed and settings it came
from, and ``subset.csv`` beside it maps every image to its tar member and the study's sample
id, for pipelines that are not WebDataset readers.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import yaml

from coreset import layout
from coreset.config import StudyConfig, config_from_dict
from coreset.data import Datasets
from coreset.data.imageset import ImageSet
from coreset.data.pack import PackSettings, index_name, member_key, plan_pack, subset_source
from coreset.errors import StageError
from coreset.stages.retrain import Trial, recorded_subset
from coreset.stages.score import recorded_settings
from coreset.storage import StudyRoot

__all__ = ["SUBSET_CSV", "check_subset", "study_config", "subset_pack", "write_subset_csv"]

SUBSET_CSV = "subset.csv"


def study_config(root: StudyRoot) -> StudyConfig:
    """The config a study's jobs recorded: what data it reads, how it scored."""
    if not root.exists(layout.CONFIG):
        raise StageError(f"{root.url()} holds no study ({layout.CONFIG} not found); pass the --root of a study")
    return config_from_dict(yaml.safe_load(root.read_bytes(layout.CONFIG)))


def check_subset(cfg: StudyConfig, root: StudyRoot, method: str, fraction: float, seed: int) -> tuple[Trial, dict]:
    """The trial whose subset is asked for and its method's recorded settings; refuses a
    method, fraction or seed the score stage did not record, naming those it did."""
    recorded = recorded_settings(root)
    if not recorded:
        raise StageError(f"{root.url()} holds no scores ({layout.SCORES_MANIFEST} not found); run jobs/score.py "
                         f"on it first")
    if method not in recorded:
        raise StageError(f"the study in {root.url()} scored {', '.join(sorted(recorded))}, not {method}")
    settings = recorded[method]
    if not np.isclose(settings["fractions"], fraction).any() or seed not in settings["seeds"]:
        raise StageError(f"the study in {root.url()} selected {method} subsets at fractions "
                         f"{', '.join(f'{f:g}' for f in settings['fractions'])} and seeds "
                         f"{', '.join(map(str, settings['seeds']))}, not fraction {fraction:g} seed {seed}")
    return Trial(method, fraction, seed, cfg.model.name), settings


def subset_pack(cfg: StudyConfig, root: StudyRoot, datasets: Datasets, trial: Trial, method_settings: dict,
                settings: PackSettings) -> tuple[dict, dict[str, ImageSet], np.ndarray]:
    """The plan of the subset's pack, the pack tasks' sources and the subset's sample ids."""
    ids = recorded_subset(root, trial)
    sources = {"train": subset_source(datasets.train, ids),
               "test": subset_source(datasets.test, np.arange(len(datasets.test)))}
    plan = plan_pack(cfg.data.name, sources["train"], sources["test"], settings)
    plan["subset"] = {"study": root.url(), "name": cfg.name, "method": trial.method, "fraction": trial.fraction,
                      "seed": trial.seed, "settings": method_settings, "images": len(ids),
                      "data": datasets.identity}
    return plan, sources, ids


def write_subset_csv(out: StudyRoot, manifest: dict, ids: np.ndarray) -> pd.DataFrame:
    """``subset.csv``: each train image's tar member (``shard``, ``key``, the byte range of its
    image), the study's ``sample_id``, ``label``, ``class`` and original ``path``."""
    index = pd.read_parquet(io.BytesIO(out.read_bytes(index_name("train"))))
    shards = [s["name"] for s in manifest["splits"]["train"]["shards"]]
    classes = np.array(manifest["classes"], dtype=object)
    table = pd.DataFrame({"shard": [shards[s] for s in index.shard], "key": [member_key(i) for i in index.sample_id],
                          "offset": index.offset, "size": index["size"], "sample_id": ids, "label": index.label,
                          "class": classes[index.label.to_numpy()], "path": index.path})
    out.write_bytes(SUBSET_CSV, table.to_csv(index=False).encode())
    return table
