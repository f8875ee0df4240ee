"""Datasets by name, their canonical sample ids, the validation split and batch loaders."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from coreset.config import DataConfig
from coreset.data.formats import DataError, cache_dir, load_splits, native_size
from coreset.data.gather import SubsetBatches, gather, should_gather
from coreset.data.identity import data_identity
from coreset.data.imageset import ImageSet
from coreset.data.loader import Batches
from coreset.data.packed import is_pack, train_shards
from coreset.data.resident import held_bytes, on_device
from coreset.data.split import probe_ids, split_ids, train_val_split
from coreset.data.transforms import BatchTransform
from coreset.models.base import InputSpec


@dataclass
class Datasets:
    """Everything a stage needs about the data of a study."""

    config: DataConfig
    train: ImageSet  # the whole canonical train set; the split says which ids are 'val'
    test: ImageSet
    size: int
    # resident copies by device (resident): made once per process, shared by a pack's trials
    _resident: dict[str, Datasets] = field(default_factory=dict, repr=False, compare=False)

    @property
    def spec(self) -> InputSpec:
        return InputSpec(self.train.channels, self.size, self.train.num_classes)

    @functools.cached_property
    def identity(self) -> dict:
        """What a study records of this data (:func:`coreset.data.identity.data_identity`), worked
        out once: every stage's check and the record compare it (decoded arrays hash their pixels)."""
        return data_identity(self.config.name, self.config.root, self.train, self.test)

    def transform(self) -> BatchTransform:
        return BatchTransform.for_dataset(self.config.name, self.train.channels, self.size, self.config.augment)

    def batches(self, split: str, ids: np.ndarray | None, batch_size: int, train: bool = False,
                shuffle: bool = False, seed: int = 0, rank: int = 0, world: int = 1) -> Batches:
        """Batches over ``ids`` of the 'train' set (train/val ids) or of the 'test' set (all when None)."""
        ds = self.test if split == "test" else self.train
        if ids is None:
            ids = np.arange(len(ds))
        return Batches(ds, ids, batch_size, self.transform(), train=train, shuffle=shuffle, seed=seed,
                       rank=rank, world=world, loader_workers=self.config.loader_workers,
                       shuffle_buffer=self.config.shuffle_buffer, shuffle_chunk=self.config.shuffle_chunk)

    def subset_batches(self, ids: np.ndarray, batch_size: int, train: bool = False, shuffle: bool = False,
                       seed: int = 0, device: torch.device | None = None, max_bytes: int = 0) -> Batches:
        """Batches over train ``ids`` that a retraining trial reads many times: from a
        streaming pack, its images are gathered once into the local cache
        (:mod:`coreset.data.gather`) and read from there; the same batches either way. A
        gathered subset decoded in memory is held on ``device`` when it fits in ``max_bytes``
        (:mod:`coreset.data.resident`)."""
        if should_gather(self.train, ids):
            subset = gather(self.train, ids, self.size, cache_dir(self.config), self.config.max_decoded_gb)
            if subset is not None:
                if device is not None and subset.in_memory and held_bytes(subset, device) <= max_bytes:
                    subset = on_device(subset, device)
                return SubsetBatches(subset, ids, batch_size, self.transform(), train=train, shuffle=shuffle,
                                     seed=seed, loader_workers=self.config.loader_workers)
        return self.batches("train", ids, batch_size, train=train, shuffle=shuffle, seed=seed)

    def resident(self, device: torch.device, max_bytes: int) -> Datasets | None:
        """These datasets with both splits' decoded images and labels held on ``device``, made
        once (a pack's trials share one copy and index their subsets in it); None when a split
        is not decoded in memory or the two would add more than ``max_bytes`` there. On the
        CPU a set decoded in memory is its own resident copy (while ``max_bytes`` > 0)."""
        key = str(device)
        if key not in self._resident:
            splits = (self.train, self.test)
            if max_bytes <= 0 or not all(s.in_memory for s in splits):
                return None
            if sum(held_bytes(s, device) for s in splits) > max_bytes:
                return None
            self._resident[key] = replace(self, train=on_device(self.train, device),
                                          test=on_device(self.test, device), _resident={})
        return self._resident[key]


def load_datasets(cfg: DataConfig) -> Datasets:
    """Load ``cfg``'s dataset (train and test splits, canonical order)."""
    train, test = load_splits(cfg)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{cfg.name} under {cfg.root} has an empty split")
    return Datasets(cfg, train, test, native_size(cfg, train))


def streamed_shards(cfg: DataConfig) -> list[tuple[int, int]] | None:
    """``(first, count)`` of the train shards of ``cfg``'s pack when it streams and was cut by
    class (:func:`coreset.data.packed.train_shards`); ``None`` for every other dataset."""
    if cfg.name == "synthetic" or not is_pack(cfg.root):
        return None
    return train_shards(cfg.root, native_size(cfg), cfg.max_decoded_gb)


__all__ = ["Batches", "BatchTransform", "DataError", "Datasets", "ImageSet", "load_datasets", "probe_ids", "split_ids",
           "streamed_shards", "train_val_split"]
