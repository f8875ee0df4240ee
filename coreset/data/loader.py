"""Mini-batches of ``(x, y, sample_id)`` over a chosen set of sample ids.

One class serves training (shuffled, augmented, sharded across data-parallel ranks),
evaluation and the gradient stage (ordered, no augmentation). Decoded datasets are
sliced directly from memory; file-backed and packed ones go through a torch DataLoader
whose workers decode JPEGs (a packed set read in order: shard by shard; a shuffled epoch
over most of a pack: runs of a few dozen images in a seeded order over every shard, mixed
through a shuffle buffer); an
image they cannot decode stops the run with a one-line :class:`DataError` naming it (not a
worker traceback).
"""
from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.context
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from coreset.data.decode import decode_batch, resize_center_crop
from coreset.data.imageset import DataError, ImageSet
from coreset.data.packed import STREAM_FRACTION
from coreset.data.transforms import BatchTransform

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# Runs of a shuffled epoch a loader worker reads at once: each run is one request, and a
# request's wait (tens of ms on an object store) would otherwise add to every run's decode.
RUNS_TOGETHER = 8


class Batches:
    """Iterable over batches of ``ids`` (canonical sample ids of ``dataset``).

    ``shuffle`` draws a new permutation each epoch from ``(seed, epoch)``, identical on
    every rank; rank ``r`` of ``world`` takes every ``world``-th id of it, truncated so
    all ranks run the same number of steps (a DDP requirement).

    A packed set streams instead when the ids are a large part of the shards holding them
    (:func:`_streams`). Each shard's ids are cut into runs of ``shuffle_chunk`` consecutive
    images; each epoch permutes every run of every shard (seeded by ``(seed, epoch)``), rank
    ``r`` takes the ``r``-th of ``world`` contiguous equal parts of that image stream, loader
    workers read and decode one run at a time (one range read each) and this process draws
    every batch from a buffer of ``shuffle_buffer`` images with a generator of ``(seed, epoch,
    rank)``. Runs, not whole shards, because a pack's shards hold one or two classes each: with
    whole shards in the buffer a batch would see a window of a few classes moving through the
    epoch (Tiny-ImageNet-10: 21.8% test accuracy against 39.4% from a full permutation,
    ``benchmarks/shuffle.py``). The DataLoader hands the runs over in order, so the batches do
    not depend on worker timing.
    """

    def __init__(self, dataset: ImageSet, ids: Sequence[int] | np.ndarray | torch.Tensor, batch_size: int,
                 transform: BatchTransform, train: bool = False, shuffle: bool = False, seed: int = 0,
                 rank: int = 0, world: int = 1, loader_workers: int = 2, shuffle_buffer: int = 16_384,
                 shuffle_chunk: int = 64) -> None:
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
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_chunk = shuffle_chunk
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

    def _streams(self) -> bool:
        """Whether a shuffled epoch streams runs of shards through the buffer: a pack, and the
        ids at least ``STREAM_FRACTION`` of the shards that hold them (a small subset of a large
        pack keeps its range reads and its full permutation)."""
        pack = self.dataset.pack
        if pack is None or not self.shuffle or not len(self.ids):
            return False
        held = np.unique(pack.shard_of[self.ids.numpy()])
        return len(self.ids) >= STREAM_FRACTION * sum(pack.shards[k]["count"] for k in held.tolist())

    def _shard_pieces(self) -> list[np.ndarray]:
        """This rank's part of the epoch's stream, as runs of at most ``shuffle_chunk`` ids in
        sample order within one shard: every shard's runs in a seeded order (the same on every
        rank), cut into ``world`` contiguous parts of ``len(ids) // world`` images."""
        pack = self.dataset.pack
        assert pack is not None
        runs = [run for group in pack.groups(np.sort(self.ids.numpy()))
                for run in np.array_split(group, -(-len(group) // self.shuffle_chunk))]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        runs = [runs[k] for k in torch.randperm(len(runs), generator=g).tolist()]
        if self.world == 1:
            return runs
        per_rank = len(self.ids) // self.world
        ends = np.cumsum([len(r) for r in runs])
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
        pieces = []
        for run, end in zip(runs, ends.tolist(), strict=True):
            start = end - len(run)
            if end > lo and start < hi:
                pieces.append(run[max(lo - start, 0): min(hi, end) - start])
        return pieces

    def __iter__(self) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch * 31 + self.rank)
        if self._streams():
            runs = _Groups(self.dataset, self.transform.size, self._shard_pieces(), RUNS_TOGETHER)
            yield from self._checked(self._buffered(self._loaded(runs)), g)
            return
        order = self._order()
        if self.dataset.in_memory:
            yield from self._sliced(order, g)
            return
        yield from self._checked(self._decoded(order), g)

    def _sliced(self, order: torch.Tensor, g: torch.Generator) -> Iterator[Batch]:
        """Batches of decoded images sliced in ``order``, on the device that holds them (a GPU for
        retraining's resident data, :mod:`coreset.data.resident`): the order moves there once an
        epoch, so each batch is gathered, augmented and normalised without leaving it. The ids
        stay on the CPU, where callers keep them."""
        images, labels = self.dataset.images, self.dataset.labels
        assert images is not None
        rows = order.to(images.device, non_blocking=True)
        for start in range(0, len(order), self.batch_size):
            index = rows[start : start + self.batch_size]
            yield self.transform(images[index], self.train, g), labels[index], order[start : start + self.batch_size]

    def _checked(self, decoded: Iterator[tuple[torch.Tensor, ...]], g: torch.Generator) -> Iterator[Batch]:
        """Decoded batches augmented by ``transform``; a batch with an image that did not decode stops the run."""
        for images, labels, ids, ok in decoded:
            if not bool(ok.all()):
                raise DataError(f"{self._unreadable(int(ids[~ok][0]))}; file-backed datasets check only image "
                                f"headers when they load, so data.corrupt=skip cannot leave it out now: repair or "
                                f"remove the file (removing renumbers sample ids: use a new --root)")
            yield self.transform(images, self.train, g), labels, ids

    def _context(self) -> multiprocessing.context.BaseContext | None:
        """A forked S3 client hangs, so loader workers of a remote pack must not fork this
        process. They fork a fork server instead, which imported the loader once: spawning
        fresh interpreters would cost each ``Batches`` pass seconds of imports per worker (a
        gradient shard, a trial's epoch), forking from the server milliseconds."""
        pack = self.dataset.pack
        return _fork_server() if pack is not None and "://" in pack.uri and self.loader_workers else None

    def _loaded(self, groups: _Groups, pin: bool = False) -> DataLoader:
        """The groups decoded by loader workers, handed over in order whatever the workers' timing."""
        return DataLoader(groups, batch_size=None, num_workers=self.loader_workers,
                          multiprocessing_context=self._context(), pin_memory=pin)

    def _buffered(self, groups: Iterable[tuple[torch.Tensor, ...]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches drawn at random from a buffer of ``shuffle_buffer`` images fed by ``groups``
        in order: a batch is taken whenever the buffer holds ``shuffle_buffer + batch_size``, its
        slots refilled from the buffer's tail (each batch moves O(batch) images, never the
        buffer); what is left at the end goes out in a random order."""
        g = torch.Generator().manual_seed(self.seed * 104_729 + self.epoch * 37 + self.rank)
        cap = min(self.shuffle_buffer + self.batch_size, len(self.ids) // self.world)
        pool: list[torch.Tensor] = []
        held = 0
        for group in groups:
            if not pool:
                pool = [torch.empty((cap, *t.shape[1:]), dtype=t.dtype) for t in group]
            done = 0
            while done < len(group[2]):
                take = min(cap - held, len(group[2]) - done)
                for p, t in zip(pool, group, strict=True):
                    p[held: held + take] = t[done: done + take]
                held, done = held + take, done + take
                if held == cap:
                    slots = torch.randperm(cap, generator=g)[: self.batch_size]
                    yield _draw(pool, slots)
                    held -= len(slots)
        rest = torch.randperm(held, generator=g)
        for start in range(0, held, self.batch_size):
            yield tuple(p[rest[start: start + self.batch_size]] for p in pool)

    def _decoded(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of ``(images, labels, ids, ok)`` decoded by loader workers. A packed set read
        in order goes shard by shard (:meth:`PackedSplit.read_group`: one request for most of
        a shard), re-cut into batches here; otherwise each worker reads one image at a time."""
        pack = self.dataset.pack
        pin = torch.cuda.is_available()
        if pack is None or self.shuffle:
            yield from DataLoader(_Decoded(self.dataset, self.transform.size), batch_size=self.batch_size,
                                  sampler=order.tolist(), collate_fn=_as_batch, num_workers=self.loader_workers,
                                  multiprocessing_context=self._context(), persistent_workers=False, pin_memory=pin)
            return
        pending: list[tuple[torch.Tensor, ...]] = []
        for group in self._loaded(_Groups(self.dataset, self.transform.size, pack.groups(order.numpy())), pin):
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


@functools.cache
def _fork_server() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["coreset.data.loader"])
    return context


class _Groups(Dataset):
    """Groups of sample ids within one shard of a packed set, ``together`` consecutive groups an
    item: a loader worker reads an item's groups at once (one thread each: their requests wait
    on the store together, not one after the other) and decodes them into ``(images, labels,
    ids, ok)`` (``ok`` as in :class:`_Decoded`)."""

    def __init__(self, dataset: ImageSet, size: int, groups: list[np.ndarray], together: int = 1) -> None:
        self.dataset, self.size = dataset, size
        self.items = [groups[k: k + together] for k in range(0, len(groups), together)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        groups = self.items[g]
        pack = self.dataset.pack
        assert pack is not None
        with ThreadPoolExecutor(len(groups)) as pool:
            encoded = [data for part in pool.map(pack.read_group, groups) for data in part]
        images, ok = decode_batch(encoded, self.dataset.channels, self.size)
        index = torch.from_numpy(np.concatenate(groups))
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


def _draw(pool: list[torch.Tensor], slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The images at ``slots`` of a full buffer, taken out: the buffer's last ``len(slots)`` rows
    move into the taken slots below them, so its first rows stay the ones held."""
    cap, n = len(pool[0]), len(slots)
    out = tuple(p[slots] for p in pool)
    tail = torch.zeros(cap, dtype=torch.bool)
    tail[slots] = True
    holes = slots[slots < cap - n]
    movers = torch.arange(cap - n, cap)[~tail[cap - n:]]
    for p in pool:
        p[holes] = p[movers]
    return out


def _as_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The DataLoader's collate step for :class:`_Decoded`, whose batches arrive whole."""
    return batch
