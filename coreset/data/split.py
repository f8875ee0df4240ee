"""The validation split: a fixed fraction of the train set, chosen by the study seed.

Recorded as a table (``sample_id, label, split``) in the study root so that every stage
and every later run uses the same ids, whatever the code version.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def train_val_split(labels: np.ndarray, val_fraction: float, seed: int) -> pd.DataFrame:
    """``sample_id, label, split`` for every train image; ``round(val_fraction * N)`` go to 'val'."""
    n = len(labels)
    n_val = int(round(val_fraction * n))
    perm = np.random.default_rng(seed).permutation(n)
    split = np.full(n, "train", dtype=object)
    split[perm[:n_val]] = "val"
    return pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64), "label": np.asarray(labels, dtype=np.int64),
                         "split": pd.Series(split, dtype="string")})


def split_ids(split: pd.DataFrame, which: str = "train") -> np.ndarray:
    """Sorted sample ids of one side ('train' or 'val') of a split table."""
    return np.sort(split.sample_id[split.split == which].to_numpy())


def probe_ids(train_ids: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A fixed random subset of the train split whose gradients are tracked every epoch."""
    rng = np.random.default_rng(seed + 1)
    size = min(size, len(train_ids))
    return np.sort(rng.choice(np.asarray(train_ids), size=size, replace=False))
