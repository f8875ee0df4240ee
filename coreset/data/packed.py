"""Reading a packed dataset (``coreset/data/pack.py`` wrote it) as ``data.root``.

A pack is opened from its manifest and indexes, and every shard is checked against the
manifest's byte sizes with one listing, so a missing or truncated shard stops the job at
start with one line naming it. Packs small enough to decode (``data.max_decoded_gb``) are
streamed once, each shard front to back in one request, and held decoded like a small
folder; larger ones stay packed and are read per batch: one request for the bytes a group
of images spans where they fill most of it (a whole shard for the gradient stage, a run of a
shuffled epoch: :class:`coreset.data.loader.Batches`), range reads at the index's offsets
for a few images (a small subset). Transient read errors are retried a bounded number of times
(:func:`retried`). Images decode through the project's one decode path, so a pack gives the
folder's pixels.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import torch

from coreset.data.cache import cache_key, cached_decode
from coreset.data.decode import DECODER
from coreset.data.identity import fingerprint
from coreset.data.imageset import ImageSet, decode_all
from coreset.data.pack import FORMAT, MANIFEST, PLAN, SPLITS, member_key
from coreset.errors import DataError
from coreset.storage import StudyRoot

__all__ = ["PackedSplit", "is_pack", "load_pack", "retried", "train_shards"]

# A group of ids whose images fill at least this fraction of the bytes they span is read in
# one request of that span (a whole shard, a run of a shuffled epoch), else one per image; and
# a shuffled epoch streams runs when its ids are at least this fraction of their shards' images.
STREAM_FRACTION = 0.25
# A shard streamed front to back (decoding a small pack) is read this many bytes a request.
STREAM_BUFFER = 16 << 20
# Pauses before the 2nd and 3rd try of a read that failed with a transient OSError (an object
# store's 500/503, a reset connection): a few seconds at most, then the job stops naming the file.
RETRY_PAUSES = (0.5, 2.0)
T = TypeVar("T")


def retried(what: str, read: Callable[[], T]) -> T:
    """``read()``, tried again after each of :data:`RETRY_PAUSES` when it raises an ``OSError``;
    the last failure becomes a one-line DataError naming ``what``. A missing file is not retried:
    the pack's files were checked when it opened, and waiting would not bring one back."""
    for pause in (*RETRY_PAUSES, None):
        try:
            return read()
        except FileNotFoundError as e:
            raise DataError(f"cannot read {what}: {e}") from None
        except OSError as e:
            if pause is None:
                raise DataError(f"cannot read {what} ({len(RETRY_PAUSES) + 1} tries): {e}") from None
            time.sleep(pause)
    raise AssertionError("unreachable")


def is_pack(root: str) -> bool:
    """Object-store roots are always packs; a local folder is one when it holds a pack's plan."""
    if "://" in root:
        return True
    folder = os.path.expanduser(root)
    return os.path.isfile(os.path.join(folder, MANIFEST)) or os.path.isfile(os.path.join(folder, PLAN))


@dataclass
class PackedSplit:
    """One split of a pack, read by sample id. Holds the pack's URI, not a filesystem: loader
    workers and Ray workers each open their own (an S3 client does not survive a fork)."""

    uri: str
    split: str
    shards: list[dict]
    shard_of: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    identity: str = ""  # the pack's manifest key (:func:`manifest_key`): the same for every copy of it
    _opened: tuple[int, StudyRoot] | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_opened": None}

    @property
    def root(self) -> StudyRoot:
        if self._opened is None or self._opened[0] != os.getpid():
            self._opened = (os.getpid(), StudyRoot(self.uri))
        return self._opened[1]

    def shard_url(self, shard: int) -> str:
        return self.root.url(self.shards[shard]["name"])

    def member(self, index: int) -> str:
        return f"{self.shard_url(int(self.shard_of[index]))} (sample {index})"

    def read(self, index: int) -> bytes:
        """One image's bytes: a range read at the index's offset."""
        return self._ranges(np.array([index]))[0]

    def _ranges(self, ids: np.ndarray) -> list[bytes]:
        """Range reads of ``ids`` (one shard) through one open file: on S3 one HEAD, then a GET each."""
        shard = int(self.shard_of[ids[0]])
        return retried(self.member(int(ids[0])), lambda: self._read_at(shard, ids))

    def _read_at(self, shard: int, ids: np.ndarray) -> list[bytes]:
        out = []
        with self.root.fs.open_input_file(self.root.path(self.shards[shard]["name"])) as f:
            for i in ids.tolist():
                out.append(f.read_at(int(self.sizes[i]), int(self.offsets[i])))
                if len(out[-1]) != int(self.sizes[i]):
                    raise DataError(f"{self.shard_url(shard)} is truncated: sample {i} lies past its end; repack it")
        return out

    def groups(self, order: Sequence[int]) -> list[np.ndarray]:
        """``order`` cut where the shard changes: each group lies in one shard."""
        order = np.asarray(order, dtype=np.int64)
        if not len(order):
            return []
        cuts = np.flatnonzero(np.diff(self.shard_of[order])) + 1
        return np.split(order, cuts)

    def read_group(self, ids: np.ndarray) -> list[bytes]:
        """The bytes of ``ids`` (one shard): one range read of the bytes they span when their
        images are a large part of it (a whole shard for the gradient stage, a run of a
        shuffled epoch), else a range read each (a few images of a small subset)."""
        shard = int(self.shard_of[ids[0]])
        starts, sizes = self.offsets[ids], self.sizes[ids]
        start, stop = int(starts.min()), int((starts + sizes).max())
        if sizes.sum() < STREAM_FRACTION * (stop - start):
            return self._ranges(ids)
        span = retried(self.member(int(ids[0])), lambda: self._read_span(shard, start, stop))
        return [span[o - start: o - start + n] for o, n in zip(starts.tolist(), sizes.tolist(), strict=True)]

    def _read_span(self, shard: int, start: int, stop: int) -> bytes:
        with self.root.fs.open_input_file(self.root.path(self.shards[shard]["name"])) as f:
            data = f.read_at(stop - start, start)
        if len(data) != stop - start:
            raise DataError(f"{self.shard_url(shard)} is truncated: its images end past byte {start + len(data)}; "
                            f"repack it")
        return data

    def stream(self, shard: int) -> Iterator[tuple[str, bytes]]:
        """``(key, image bytes)`` of every image of a shard, front to back, one request; a
        transient read error re-opens the shard (at most :data:`RETRY_PAUSES` times) and
        skips the images already given."""
        url, given = self.shard_url(shard), 0
        for pause in (*RETRY_PAUSES, None):
            try:
                for member in self._members(shard, given):
                    yield member
                    given += 1
                return
            except (tarfile.TarError, EOFError, FileNotFoundError) as e:
                raise DataError(f"cannot read {url}: {e}; repack it (jobs/pack.py writes only missing shards)") \
                    from None
            except OSError as e:
                if pause is None:
                    raise DataError(f"cannot read {url} ({len(RETRY_PAUSES) + 1} tries): {e}") from None
                time.sleep(pause)

    def _members(self, shard: int, skip: int) -> Iterator[tuple[str, bytes]]:
        """The images of a shard after its first ``skip``, read front to back through a buffer
        of :data:`STREAM_BUFFER` bytes (unbuffered, an S3 stream sends a ranged GET for every
        ``tarfile`` read of a 512-byte header)."""
        path = self.root.path(self.shards[shard]["name"])
        with self.root.fs.open_input_stream(path, buffer_size=STREAM_BUFFER) as f, \
                tarfile.open(fileobj=f, mode="r|") as tar:
            images = (m for m in tar if not m.name.endswith(".cls"))
            for k, m in enumerate(images):
                if k >= skip:
                    yield m.name.split(".", 1)[0], tar.extractfile(m).read()  # type: ignore[union-attr]


def _in_order(pack: PackedSplit, count: int) -> Iterator[bytes]:
    """Every image of the split, each shard streamed front to back, checked to be in sample order."""
    expected = 0
    for shard in range(len(pack.shards)):
        for key, data in pack.stream(shard):
            if key != member_key(expected):
                raise DataError(f"{pack.shard_url(shard)} holds {key} where sample {expected} belongs; repack it")
            expected += 1
            yield data
    if expected != count:
        raise DataError(f"the shards of {pack.uri} hold {expected} {pack.split} images, the index {count}; repack")


def manifest_key(manifest: dict) -> str:
    """What identifies a pack's content, whatever its URI: its manifest (classes, counts,
    encoding, every shard's id range and byte size) hashed."""
    return cache_key(manifest)


def load_pack(name: str, uri: str, size: int, max_decoded_gb: float, cache: Path) -> tuple[ImageSet, ImageSet]:
    """(train, test) of the pack at ``uri`` for dataset ``name`` at ``size`` px; a decoded pack's
    pixels are kept under ``cache`` (each job start would stream and decode it again)."""
    root = StudyRoot(uri)
    manifest = _manifest(root)
    if manifest.get("dataset") != name:
        raise DataError(f"{root.url()} is a pack of {manifest.get('dataset')}, not {name}; set data.name "
                        f"or data.root")
    _check_shards(root, manifest)
    channels, classes = int(manifest["channels"]), list(manifest["classes"])
    decoded = _decodes(manifest, size, max_decoded_gb)
    return tuple(_split(root, manifest, split, channels, classes, size, cache if decoded else None)
                 for split in SPLITS)  # type: ignore[return-value]


def _decodes(manifest: dict, size: int, max_decoded_gb: float) -> bool:
    """Whether the pack is small enough to be decoded into memory at ``size`` px."""
    counts = sum(manifest["splits"][s]["count"] for s in SPLITS)
    return counts * int(manifest["channels"]) * size * size / 1e9 <= max_decoded_gb


def train_shards(uri: str, size: int, max_decoded_gb: float) -> list[tuple[int, int]] | None:
    """``(first, count)`` of each train shard of the pack at ``uri`` when it streams (too large to
    decode at ``size`` px) and was cut by class: then the gradient stage computes one pack shard
    per work unit, each read front to back in one request. ``None`` otherwise (the stage cuts
    its own class shards: a decoded pack is in memory, a size-cut one splits classes)."""
    manifest = _manifest(StudyRoot(uri))
    info = manifest["splits"]["train"]
    if _decodes(manifest, size, max_decoded_gb) or info.get("cut") != "class":
        return None
    return [(int(s["first"]), int(s["count"])) for s in info["shards"]]


def _manifest(root: StudyRoot) -> dict:
    if not retried(root.url(MANIFEST), lambda: root.exists(MANIFEST)):
        if root.exists(PLAN):
            raise DataError(f"the pack at {root.url()} is unfinished (no {MANIFEST}); rerun jobs/pack.py "
                            f"with the same --out to write the missing shards")
        raise DataError(f"{root.url()} holds no pack ({MANIFEST} not found); write one with jobs/pack.py "
                        f"or set data.root to a dataset folder")
    try:
        manifest = json.loads(_read(root, MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{root.url(MANIFEST)} is not a pack manifest: {e}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{root.url(MANIFEST)} is format {manifest.get('format')!r}; this version reads {FORMAT}")
    return manifest


def _read(root: StudyRoot, rel: str) -> bytes:
    """A whole small file of the pack (its manifest, an index), transient errors retried."""
    def read() -> bytes:
        with root.fs.open_input_stream(root.path(rel)) as f:
            return f.read()
    return retried(root.url(rel), read)


def _check_shards(root: StudyRoot, manifest: dict) -> None:
    """Every shard present at its recorded size (one listing of the pack's folder)."""
    listing = retried(root.url(), lambda: root.fs.get_file_info(pafs.FileSelector(root.path(""), recursive=False)))
    found = {i.base_name: i.size for i in listing}
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            have = found.get(shard["name"])
            if have is None:
                raise DataError(f"pack shard {root.url(shard['name'])} is missing; rerun jobs/pack.py with the "
                                f"same --out to write it again")
            if have != shard["bytes"]:
                raise DataError(f"pack shard {root.url(shard['name'])} is truncated or altered ({have} bytes, "
                                f"the manifest says {shard['bytes']}); delete it and rerun jobs/pack.py")


def _split(root: StudyRoot, manifest: dict, split: str, channels: int, classes: list[str], size: int,
           cache: Path | None) -> ImageSet:
    """One split: streamed per batch, or (``cache`` given) decoded, from the cache when a copy
    of this pack was decoded at this size before."""
    info = manifest["splits"][split]
    index = pd.read_parquet(io.BytesIO(_read(root, info["index"])))
    if len(index) != info["count"] or not np.array_equal(index.sample_id.to_numpy(), np.arange(info["count"])):
        raise DataError(f"{root.url(info['index'])} does not list samples 0..{info['count'] - 1}; repack")
    identity = manifest_key(manifest)
    pack = PackedSplit(root.uri, split, list(info["shards"]), index.shard.to_numpy(np.int64),
                       index.offset.to_numpy(np.int64), index["size"].to_numpy(np.int64), identity)
    labels = torch.tensor(index.label.to_numpy(np.int64))
    paths = [str(p) for p in index.path] if index.path.notna().all() else None
    skipped = [(str(p), str(r)) for p, r in info["skipped"]]
    origin = pack_origin(root.uri, manifest, split, labels.numpy(), pack.sizes)
    if cache is None:
        return ImageSet(labels, classes, channels, paths=paths, skipped=skipped, pack=pack, origin=origin)
    entry = cache / "decoded" / f"pack-{cache_key(identity, split, channels, size, DECODER)}.npy"
    images, bad = cached_decode(entry, lambda: decode_all(_in_order(pack, len(index)), channels, size,
                                                          [pack.member(i) for i in range(len(index))]))
    if bad:
        i, why = bad[0]
        raise DataError(f"cannot decode {pack.member(i)}: {why}; repack it")
    return ImageSet(labels, classes, channels, images=images, paths=paths, skipped=skipped, origin=origin)


def pack_origin(uri: str, manifest: dict, split: str, labels: np.ndarray, sizes: np.ndarray) -> dict:
    """What a study records of a pack split it reads (:mod:`coreset.data.identity`): a pack of
    decoded images (torchvision, IDX) carries their pixels' fingerprint, the others their index's."""
    pixels = manifest["splits"][split].get("pixels")
    return {"kind": "pack", "uri": uri, "encoding": manifest["encoding"],
            "fingerprint": pixels or fingerprint(labels, sizes)}
