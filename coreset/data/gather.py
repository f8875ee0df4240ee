"""A retraining trial's subset of a large streaming pack, gathered once per machine.

A trial on 1% of ImageNet read from a pack in object storage would otherwise fetch its images
again every epoch (range reads, one request each). Instead the subset's images are read once
(grouped per shard: :meth:`PackedSplit.read_group`, several shards at a time, each decoded by
the thread that read it) into ``data.cache_dir``: decoded to uint8 at the study's image size
when the subset fits in ``data.max_decoded_gb`` (the trial then trains from memory), else their
stored bytes in one local tar that the trial reads instead of the pack. The entry's name is a
hash of the pack's manifest (the same for every copy of the pack), the split, the subset's ids
and the image size, so other seeds' trials of the same subset on one node reuse it; it is
written to a temporary name and renamed, so concurrent trials never read a partial one.

The gathered set holds the subset alone, by position; :class:`SubsetBatches` yields the subset's
sample ids, in the batches the whole set would give.
"""
from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from coreset.data.cache import cache_key, cached_decode
from coreset.data.decode import DECODER
from coreset.data.imageset import ImageSet, decode_all
from coreset.data.loader import Batch, Batches
from coreset.data.pack import add_member, extension, member_key
from coreset.data.packed import PackedSplit
from coreset.errors import DataError

__all__ = ["SubsetBatches", "gather", "should_gather"]
log = logging.getLogger("coreset")

# Shards read at once while gathering: object-store latency, not bandwidth, bounds one reader.
GATHER_THREADS = 16
# A subset larger than this part of its split is streamed as it is (a full-data trial must not
# copy the whole pack to local disk).
MAX_GATHERED_FRACTION = 0.5


def should_gather(ds: ImageSet, ids: np.ndarray) -> bool:
    """A streaming pack split and a subset small enough to be worth a local copy."""
    return ds.pack is not None and 0 < len(ids) <= MAX_GATHERED_FRACTION * len(ds)


def gather(ds: ImageSet, ids: np.ndarray, size: int, cache: Path, max_decoded_gb: float) -> ImageSet | None:
    """The images of ``ids`` (sorted sample ids of the packed ``ds``) as a set of their own,
    position ``i`` holding ``ids[i]``: decoded at ``size`` px when they fit in
    ``max_decoded_gb``, else read from a local tar; None when that tar cannot be written (a
    full disk: the trial then reads the pack, as without the cache)."""
    pack = ds.pack
    assert pack is not None
    ids = np.asarray(ids, dtype=np.int64)
    folder = cache / "subsets"
    key = cache_key(pack.identity, pack.split, ids, size)
    labels = ds.labels[torch.from_numpy(ids)]
    if len(ids) * ds.channels * size * size / 1e9 <= max_decoded_gb:
        images, _ = cached_decode(folder / f"{key}-{DECODER}.npy", lambda: _decoded(pack, ids, ds.channels, size))
        return ImageSet(labels, ds.classes, ds.channels, images=images)
    path = folder / f"{key}.tar"
    if not path.is_file():
        try:
            _write_tar(path, _fetched(pack, ids))
        except OSError as e:
            log.warning("cannot gather the subset's images into %s: %s", folder, e)
            return None
    return ImageSet(labels, ds.classes, ds.channels, pack=_local_split(path, pack.split, len(ids)))


def _decoded(pack: PackedSplit, ids: np.ndarray, channels: int, size: int) -> tuple[torch.Tensor, list]:
    """The images of ``ids`` decoded at ``size``, each shard's group read and decoded by one
    thread of a pool (decoding, like reading, releases the GIL); an unreadable one stops it."""
    def group(part: np.ndarray) -> torch.Tensor:
        names = [pack.member(int(i)) for i in part]
        images, bad = decode_all(pack.read_group(part), channels, size, names)
        if bad:
            raise DataError(f"cannot decode {names[bad[0][0]]}: {bad[0][1]}; repack it")
        return images

    with ThreadPoolExecutor(GATHER_THREADS) as pool:
        return torch.cat(list(pool.map(group, pack.groups(ids)))), []


def _fetched(pack: PackedSplit, ids: np.ndarray) -> Iterator[bytes]:
    """The stored bytes of ``ids`` in order, the shards' groups read by a pool of threads."""
    with ThreadPoolExecutor(GATHER_THREADS) as pool:
        for group in pool.map(pack.read_group, pack.groups(ids)):
            yield from group


def _write_tar(path: Path, images: Iterator[bytes]) -> None:
    """One local tar of the images, by position (keys as in a pack), published by a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for position, data in enumerate(images):
                add_member(tar, f"{member_key(position)}.{extension(data)}", data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _local_split(path: Path, split: str, count: int) -> PackedSplit:
    """The gathered tar as a one-shard pack split (read like any pack, from local disk)."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    offsets = np.array([m.offset_data for m in members], dtype=np.int64)
    sizes = np.array([m.size for m in members], dtype=np.int64)
    if len(members) != count:
        raise DataError(f"{path} holds {len(members)} images, not {count}; delete it (a cache entry)")
    shard = {"name": path.name, "first": 0, "count": count, "bytes": path.stat().st_size}
    return PackedSplit(str(path.parent), split, [shard], np.zeros(count, dtype=np.int64), offsets, sizes)


class SubsetBatches(Batches):
    """Batches over a gathered subset that yield the subset's sample ids. Its positions are the
    sorted ids' ranks, so each epoch's permutation picks the batches the whole set would."""

    def __init__(self, gathered: ImageSet, ids: np.ndarray, *args: object, **kwargs: object) -> None:
        super().__init__(gathered, np.arange(len(ids)), *args, **kwargs)  # type: ignore[arg-type]
        self.sample_ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))

    def _streams(self) -> bool:
        """Never: the gathered subset is one local file, read in the full permutation the
        uncached subset's range reads get (not the shard-order stream of a large pack)."""
        return False

    def __iter__(self) -> Iterator[Batch]:
        for x, y, positions in super().__iter__():
            yield x, y, self.sample_ids[positions]
