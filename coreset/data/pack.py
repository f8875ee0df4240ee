"""Packing a dataset into WebDataset shards: the pure part (no Ray; ``coreset/cluster/pack.py``
runs :func:`write_shard` as tasks).

A pack is a folder (local, ``s3://``, ``gs://``) of standard tar files. Shard ``k`` of a split
holds one contiguous range of ``sample_id``s in canonical order, two members per image,
``<key>.<ext>`` (the image: its original bytes, or a JPEG re-encoded at pack time) and
``<key>.cls`` (the label as decimal text), with ``key`` the zero-padded sample id: any
WebDataset reader can read it, and one sequential request reads a shard. Beside the shards:

* ``<split>-index.parquet``: ``sample_id, label, path, shard, offset, size`` (where each
  image's bytes lie: range reads of a few images need no whole shard);
* ``manifest.json``: format, dataset, class names, counts, the encoding, how each split was
  cut (``class`` or ``size``, :func:`plan_pack`), the shards and their byte sizes. It is
  written last: a pack without it is unfinished.

Resuming: each shard's index part (``_index/<shard>.parquet``) is written after its shard,
so a shard counts as done only when its part exists; a rerun (``_plan.json`` must match)
writes only the missing shards, and identical inputs give byte-identical shards.
"""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from coreset.data.cut import class_cut, is_sorted
from coreset.data.decode import decode_image, encode_jpeg, is_jpeg, reason, resize_short_side
from coreset.data.identity import split_origin
from coreset.data.imageset import ImageSet, source_files
from coreset.errors import DataError
from coreset.storage import StudyRoot

__all__ = ["FORMAT", "MANIFEST", "PackSettings", "ShardWork", "finish_pack", "index_name", "member_key",
           "add_member", "pack_source", "plan_pack", "planned", "shard_name", "start_pack", "stored_bytes",
           "subset_source", "write_pack", "write_shard"]

FORMAT = "coreset-pack/1"
MANIFEST = "manifest.json"
PLAN = "_plan.json"
SPLITS = ("train", "test")
INDEX_COLUMNS = ("sample_id", "label", "path", "shard", "offset", "size")
_TAR_OVERHEAD = 2 * 512 + 2 * 511  # two member headers, padding at worst
_EXTENSIONS = {b"\x89PNG": "png", b"BM": "bmp", b"RIFF": "webp", b"GIF8": "gif"}


@dataclass(frozen=True)
class PackSettings:
    """How a pack is cut and encoded. ``short_side`` 0 keeps every image's original bytes;
    otherwise images are re-encoded as JPEG (``quality``) with the shorter side at
    ``short_side`` px (as FFCV does): a 224 px study then decodes far fewer pixels."""

    shard_mb: float = 256.0
    short_side: int = 0
    quality: int = 90

    def encoding(self) -> dict[str, object]:
        if not self.short_side:
            return {"kind": "original"}
        return {"kind": "jpeg", "short_side": self.short_side, "quality": self.quality}


@dataclass(frozen=True)
class ShardWork:
    """One shard to write: ``count`` images from ``first`` of one split."""

    split: str
    shard: int
    first: int
    count: int

    @property
    def name(self) -> str:
        return shard_name(self.split, self.shard)


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:06d}.tar"


def index_name(split: str) -> str:
    return f"{split}-index.parquet"


def _part_name(shard: str) -> str:
    return f"_index/{shard.removesuffix('.tar')}.parquet"


def member_key(sample_id: int) -> str:
    """The WebDataset key of an image: its sample id, zero-padded (no dots: keys end at the first one)."""
    return f"{sample_id:08d}"


def pack_source(ds: ImageSet) -> ImageSet:
    """What a pack task needs of a split: its files (a decoded folder set's pixels are not
    shipped to the tasks), or the decoded images of a set that has no files."""
    if ds.pack is not None:
        raise DataError("data.root is already a pack; pack the dataset folder it came from")
    files = source_files(ds)
    if files is None:
        return ds
    return ImageSet(ds.labels, ds.classes, ds.channels, files=files, paths=ds.paths, skipped=ds.skipped)


def subset_source(ds: ImageSet, ids: np.ndarray) -> ImageSet:
    """A pack task's source of the images ``ids`` of a split, renumbered ``0..len(ids)-1`` in
    id order (a coreset's pack): its files, its pack's byte ranges (a split read as a pack
    stays packed: the original bytes, not re-encoded pixels), or its decoded images."""
    index = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    labels, paths = ds.labels[index], [ds.paths[i] for i in ids] if ds.paths is not None else None
    files = source_files(ds)
    if files is not None:
        return ImageSet(labels, ds.classes, ds.channels, files=[files[i] for i in ids], paths=paths)
    if ds.pack is not None:
        p = ds.pack
        view = dataclasses.replace(p, shard_of=p.shard_of[ids], offsets=p.offsets[ids], sizes=p.sizes[ids])
        return ImageSet(labels, ds.classes, ds.channels, paths=paths, pack=view)
    assert ds.images is not None
    return ImageSet(labels, ds.classes, ds.channels, images=ds.images[index], paths=paths)


def _stored_sizes(ds: ImageSet) -> np.ndarray:
    """Each image's bytes as stored (a decoded set's: its pixels), for cutting shards."""
    files = source_files(ds)
    if files is not None:
        return np.array([f.stat().st_size for f in files], dtype=np.int64)
    if ds.pack is not None:
        return ds.pack.sizes.astype(np.int64)
    return np.array([ds.images[0].numel()] * len(ds), dtype=np.int64)  # type: ignore[index]


def plan_pack(cfg_name: str, train: ImageSet, test: ImageSet, settings: PackSettings) -> dict:
    """The plan of a pack: settings, classes, counts and each split's shard ranges (cut on the
    source images' sizes, so re-encoded shards come out smaller than ``shard_mb``). A split
    sorted by class (a folder) is cut at class boundaries only (``cut: class``), by the rule of
    the gradient stage's shards, so that stage can take the pack's shards as its work units;
    others (torchvision's MNIST order) are cut by size alone (``cut: size``)."""
    splits = {}
    for split, ds in zip(SPLITS, (train, test), strict=True):
        sizes = _stored_sizes(ds) + _TAR_OVERHEAD
        labels = ds.labels.numpy()
        cut = "class" if is_sorted(labels) else "size"
        target = int(settings.shard_mb * 1e6)
        shards = class_cut(labels, sizes, target) if cut == "class" else _cut(sizes, target)
        splits[split] = {"count": len(ds), "skipped": [list(s) for s in ds.skipped], "cut": cut,
                         "shards": [[first, count] for first, count in shards]}
        if source_files(ds) is None and ds.pack is None and not settings.short_side:
            # stored as lossless PNG: the study's record of the decoded images must match the pack's
            splits[split]["pixels"] = split_origin(ds, "")["fingerprint"]
    return {"format": FORMAT, "dataset": cfg_name, "classes": list(train.classes), "channels": train.channels,
            "encoding": settings.encoding(), "shard_mb": settings.shard_mb, "splits": splits}


def _cut(sizes: np.ndarray, target: int) -> list[tuple[int, int]]:
    """``(first, count)`` of contiguous ranges of about ``target`` bytes each (at least one image)."""
    ranges, first, acc = [], 0, 0
    for i, size in enumerate(sizes.tolist()):
        if acc and acc + size > target:
            ranges.append((first, i - first))
            first, acc = i, 0
        acc += size
    if len(sizes):
        ranges.append((first, len(sizes) - first))
    return ranges


def shard_work(plan: dict) -> list[ShardWork]:
    return [ShardWork(split, k, first, count) for split in SPLITS
            for k, (first, count) in enumerate(plan["splits"][split]["shards"])]


def start_pack(out: StudyRoot, plan: dict) -> list[ShardWork]:
    """Record the plan (or check that a resumed pack was planned the same) and return the
    shards still to write."""
    if out.exists(PLAN):
        old = json.loads(out.read_bytes(PLAN))
        if old != plan:
            diff = sorted(k for k in plan if old.get(k) != plan[k])
            raise DataError(f"{out.url()} holds another pack (its {', '.join(diff)} differ); "
                            f"pack into an empty folder, or rerun with the settings it was started with")
    else:
        out.write_bytes(PLAN, json.dumps(plan, indent=1).encode())
    done = {name.removesuffix(".parquet") for name in out.list("_index")}
    return [w for w in shard_work(plan) if w.name.removesuffix(".tar") not in done or not out.exists(w.name)]


def stored_bytes(ds: ImageSet, files: list[Path] | None, ids: range) -> list[bytes] | None:
    """The stored bytes of images ``ids`` (``None`` for images that came decoded): each file's,
    or a pack's (a coreset's pack of a packed study) read per shard group, one span request
    where they are dense (:meth:`PackedSplit.read_group`), not one request an image."""
    if files is not None:
        return [files[i].read_bytes() for i in ids]
    if ds.pack is not None:
        return [data for group in ds.pack.groups(np.arange(ids.start, ids.stop)) for data in ds.pack.read_group(group)]
    return None


def encoded_image(ds: ImageSet, stored: bytes | None, index: int, settings: PackSettings) -> bytes:
    """The bytes a pack stores for ``index`` (from its ``stored`` bytes, a file's or a pack's
    range; ``None``: its decoded pixels): checked to decode, re-encoded when asked. A file that
    does not decode stops the pack naming it (ids are assigned by then, as for a file-backed
    folder whose damage shows in a loader worker)."""
    if stored is None:
        assert ds.images is not None
        image = ds.images[index]
        return encode_jpeg(_short_side(image, settings), settings.quality) if settings.short_side \
            else _png(image)
    try:
        image = decode_image(stored, ds.channels)
    except Exception as e:  # noqa: BLE001 - decoders raise many types for corrupt files
        raise DataError(f"cannot decode {ds.source(index)}: {reason(e)}; repair or remove it (data.corrupt=skip "
                        f"leaves out only files whose header is unreadable when a large set loads)") from None
    return encode_jpeg(_short_side(image, settings), settings.quality) if settings.short_side else stored


def _short_side(image: torch.Tensor, settings: PackSettings) -> torch.Tensor:
    return resize_short_side(image, settings.short_side) if min(image.shape[-2:]) > settings.short_side else image


def _png(image: torch.Tensor) -> bytes:
    """Lossless bytes of an image that came decoded (a pack of it then decodes to the same pixels)."""
    from PIL import Image

    arr = image.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, "PNG")
    return buf.getvalue()


def extension(data: bytes) -> str:
    if is_jpeg(data):
        return "jpg"
    return next((ext for magic, ext in _EXTENSIONS.items() if data.startswith(magic)), "img")


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    """One tar member with fixed headers (mtime 0, root owner, mode 0444): the same images give
    the same bytes on every run."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(payload), 0o444, 0
    tar.addfile(info, io.BytesIO(payload))


def shard_tar(ds: ImageSet, work: ShardWork, settings: PackSettings) -> tuple[bytes, pd.DataFrame]:
    """The tar bytes of one shard and its index rows (members by :func:`add_member`)."""
    ids = range(work.first, work.first + work.count)
    stored = stored_bytes(ds, source_files(ds), ids)
    buf = io.BytesIO()
    keys = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for k, sid in enumerate(ids):
            data = encoded_image(ds, stored[k] if stored is not None else None, sid, settings)
            key = member_key(sid)
            keys.append(f"{key}.{extension(data)}")
            add_member(tar, keys[-1], data)
            add_member(tar, f"{key}.cls", str(int(ds.labels[sid])).encode())
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r") as tar:
        where = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
    ids = np.arange(work.first, work.first + work.count, dtype=np.int64)
    paths = ds.paths[work.first: work.first + work.count] if ds.paths is not None else [None] * len(ids)
    rows = pd.DataFrame({"sample_id": ids, "label": ds.labels[work.first: work.first + work.count].numpy(),
                         "path": pd.Series(paths, dtype="string"), "shard": np.full(len(ids), work.shard, np.int32),
                         "offset": np.array([where[k][0] for k in keys], dtype=np.int64),
                         "size": np.array([where[k][1] for k in keys], dtype=np.int64)})
    return raw, rows


def write_shard(out: StudyRoot, ds: ImageSet, work: ShardWork, settings: PackSettings) -> int:
    """Write one shard atomically, then its index part (the mark that it is done); returns its bytes."""
    raw, rows = shard_tar(ds, work, settings)
    out.write_bytes(work.name, raw)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), sink)
    out.write_bytes(_part_name(work.name), sink.getvalue().to_pybytes())
    return len(raw)


def finish_pack(out: StudyRoot, plan: dict) -> dict:
    """Join the index parts into one index per split and publish the manifest (written last)."""
    manifest = dict(plan)
    manifest["splits"] = {}
    for split in SPLITS:
        works = [w for w in shard_work(plan) if w.split == split]
        parts = [pd.read_parquet(io.BytesIO(out.read_bytes(_part_name(w.name)))) for w in works]
        index = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(INDEX_COLUMNS))
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(index, preserve_index=False), sink)
        out.write_bytes(index_name(split), sink.getvalue().to_pybytes())
        sizes = {i.base_name: i.size for i in out.fs.get_file_info([out.path(w.name) for w in works])}
        manifest["splits"][split] = dict(plan["splits"][split], index=index_name(split),
                                         shards=[{"name": w.name, "first": w.first, "count": w.count,
                                                  "bytes": sizes[w.name]} for w in works])
    out.write_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def planned(name: str, train: ImageSet, test: ImageSet, settings: PackSettings) -> tuple[dict, dict[str, ImageSet]]:
    """The plan of the pack of (train, test) and each split's source for the shard writers."""
    sources = {"train": pack_source(train), "test": pack_source(test)}
    return plan_pack(name, sources["train"], sources["test"], settings), sources


def write_pack(name: str, train: ImageSet, test: ImageSet, out: StudyRoot, settings: PackSettings) -> dict:
    """The whole pack in this process, shard after shard (tests, benchmarks): the pack job runs
    the same steps with each shard a Ray task. Resumes like it; returns the manifest."""
    plan, sources = planned(name, train, test, settings)
    for work in start_pack(out, plan):
        write_shard(out, sources[work.split], work, settings)
    return finish_pack(out, plan)
