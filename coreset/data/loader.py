"""Mini-batches of ``(x, y, sample_id)`` over a chosen set of sample ids.

One class serves training (shuffled, augmented, sharded across data-parallel ranks),
evaluation and the gradient stage (ordered, no augmentation). Decoded datasets are
sliced directly from memory; file-backed and packed ones go through a torch DataLoader
whose workers decode JPEGs (a packed set read in order: shard by shard); an image they
cannot decode stops the run with a one-line :class:`DataError` naming it (not a worker
traceback).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from coreset.data.decode import decode_image, resize_center_crop
from coreset.data.imageset import DataError, ImageSet
from coreset.data.transforms import BatchTransform

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Batches:
    """Iterable over batches of ``ids`` (canonical sample ids of ``dataset``).

    ``shuffle`` draws a new permutation each epoch from ``(seed, epoch)``, identical on
    every rank; rank ``r`` of ``world`` takes every ``world``-th id of it, truncated so
    all ranks run the same number of steps (a DDP requirement).
    """

    def __init__(self, dataset: ImageSet, ids: Sequence[int] | np.ndarray | torch.Tensor, batch_size: int,
                 transform: BatchTransform, train: bool = False, shuffle: bool = False, seed: int = 0,
                 rank: int = 0, world: int = 1, loader_workers: int = 2) -> None:
        self.dataset = dataset
        self.ids = torch.as_tensor(np.array(ids, dtype=np.int64))
        if len(self.ids) and (self.ids.min() < 0 or self.ids.max() >= len(dataset)):
            raise IndexError(f"sample ids must lie in [0, {len(dataset)})")
        self.batch_size = batch_size
        self.transform = transform
        self.train = train
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world = rank, world
        self.loader_workers = loader_workers
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        ids = self.ids
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            ids = ids[torch.randperm(len(ids), generator=g)]
        if self.world > 1:
            per_rank = len(ids) // self.world
            ids = ids[self.rank :: self.world][:per_rank]
        return ids

    def __len__(self) -> int:
        n = len(self.ids) // self.world if self.world > 1 else len(self.ids)
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        order = self._order()
        g = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch * 31 + self.rank)
        if self.dataset.in_memory:
            assert self.dataset.images is not None
            for start in range(0, len(order), self.batch_size):
                ids = order[start : start + self.batch_size]
                x = self.transform(self.dataset.images[ids], self.train, g)
                yield x, self.dataset.labels[ids], ids
            return
        for images, labels, ids, ok in self._decoded(order):
            if not bool(ok.all()):
                raise DataError(f"{self._unreadable(int(ids[~ok][0]))}; file-backed datasets check only image "
                                f"headers when they load, so data.corrupt=skip cannot leave it out now: repair or "
                                f"remove the file (removing renumbers sample ids: use a new --root)")
            yield self.transform(images, self.train, g), labels, ids

    def _decoded(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of ``(images, labels, ids, ok)`` decoded by loader workers. A packed set read
        in order goes shard by shard (:meth:`PackedSplit.read_group`: one request for most of
        a shard), re-cut into batches here; otherwise each worker reads one image at a time."""
        pack = self.dataset.pack
        pin = torch.cuda.is_available()
        # A forked S3 client hangs: loader workers of a remote pack start fresh (spawn).
        context = "spawn" if pack is not None and "://" in pack.uri and self.loader_workers else None
        if pack is None or self.shuffle:
            yield from DataLoader(_Decoded(self.dataset, self.transform.size), batch_size=self.batch_size,
                                  sampler=order.tolist(), collate_fn=_as_batch, num_workers=self.loader_workers,
                                  multiprocessing_context=context, persistent_workers=False, pin_memory=pin)
            return
        groups = _Groups(self.dataset, self.transform.size, pack.groups(order.numpy()))
        pending: list[tuple[torch.Tensor, ...]] = []
        for group in DataLoader(groups, batch_size=None, num_workers=self.loader_workers,
                                multiprocessing_context=context, pin_memory=pin):
            pending.append(group)
            while pending and sum(len(g[2]) for g in pending) >= self.batch_size:
                joined = [torch.cat(parts) for parts in zip(*pending, strict=True)]
                pending = [tuple(t[self.batch_size:] for t in joined)] if len(joined[2]) > self.batch_size else []
                yield tuple(t[: self.batch_size] for t in joined)
        if pending:
            yield tuple(torch.cat(parts) for parts in zip(*pending, strict=True))

    def _unreadable(self, index: int) -> str:
        """Why a loader worker could not decode ``index`` (decoded again here for the reason)."""
        try:
            self.dataset.decode(index)
        except DataError as e:
            return str(e)
        return f"cannot decode {self.dataset.source(index)}"


class _Groups(Dataset):
    """Groups of sample ids within one shard of a packed set, each read and decoded by one
    loader worker into ``(images, labels, ids, ok)`` (``ok`` as in :class:`_Decoded`)."""

    def __init__(self, dataset: ImageSet, size: int, groups: list[np.ndarray]) -> None:
        self.dataset, self.size, self.groups = dataset, size, groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = self.groups[g]
        images = torch.zeros(len(ids), self.dataset.channels, self.size, self.size, dtype=torch.uint8)
        ok = torch.ones(len(ids), dtype=torch.bool)
        for k, data in enumerate(self.dataset.pack.read_group(ids)):  # type: ignore[union-attr]
            try:
                images[k] = resize_center_crop(decode_image(data, self.dataset.channels), self.size)
            except Exception:  # noqa: BLE001 - decoders raise many types; the main process names the image
                ok[k] = False
        index = torch.from_numpy(ids)
        return images, self.dataset.labels[index], index, ok


class _Decoded(Dataset):
    """File-backed images decoded to uint8 squares of ``size`` in loader workers, a batch at a
    time (``__getitems__``): each image is decoded straight into the batch tensor, with no
    per-image tensors for labels and ids and no collation.

    An unreadable file gives a blank image and ``ok=False`` instead of an exception, which
    the DataLoader would re-raise with the worker's traceback folded into its message.
    """

    def __init__(self, dataset: ImageSet, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        images = torch.zeros(len(indices), self.dataset.channels, self.size, self.size, dtype=torch.uint8)
        ok = torch.ones(len(indices), dtype=torch.bool)
        for k, index in enumerate(indices):
            try:
                images[k] = resize_center_crop(self.dataset.decode(index), self.size)
            except DataError:
                ok[k] = False
        ids = torch.as_tensor(indices, dtype=torch.int64)
        return images, self.dataset.labels[ids], ids, ok


def _as_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The DataLoader's collate step for :class:`_Decoded`, whose batches arrive whole."""
    return batch
