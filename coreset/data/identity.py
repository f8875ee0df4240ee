"""What data a study was started from: recorded in its root (``data_source.json``) so that no
later stage or rerun reads other images under the same sample ids.

The record names the source (a folder, a pack, decoded arrays), its encoding (the original
bytes, or JPEG re-encoded at pack time) and a fingerprint of every split's ``sample_id,
label, size`` (the stored bytes of each image: a pack's index, a folder's file sizes). A
pack of a folder's original bytes has the folder's fingerprint, so a folder study may move
to it (the migration path: the same answers); a re-encoded pack, or a pack of other images,
has another and is refused. Sizes stand in for the bytes: reading every byte at each job
start would cost a full pass over ImageNet.
"""
from __future__ import annotations

import hashlib

import numpy as np

from coreset.data.imageset import ImageSet, source_files
from coreset.errors import DataError

__all__ = ["ORIGINAL", "check_same_source", "data_identity", "describe", "fingerprint", "folder_origin", "split_origin"]

ORIGINAL = {"kind": "original"}


def fingerprint(labels: np.ndarray, sizes: np.ndarray, pixels: bytes = b"") -> str:
    """sha256 of a split's ``sample_id, label, size`` columns (int64), and of its pixels for
    images that have no stored bytes."""
    h = hashlib.sha256()
    for column in (np.arange(len(labels)), labels, sizes):
        h.update(np.ascontiguousarray(column, dtype=np.int64).tobytes())
    h.update(pixels)
    return h.hexdigest()


def folder_origin(where: str, labels: np.ndarray, sizes: np.ndarray) -> dict:
    """A folder split's origin from its files' sizes (the folder loader has them from its own stats)."""
    return {"kind": "folder", "uri": where, "encoding": ORIGINAL, "fingerprint": fingerprint(labels, sizes)}


def split_origin(ds: ImageSet, where: str) -> dict:
    """A split's origin: the pack reader's, or a folder's from its files' sizes (one stat a
    file), or, for images that came decoded (torchvision, IDX, synthetic), their pixels hashed."""
    if ds.origin is not None:
        return ds.origin
    labels = ds.labels.numpy()
    files = source_files(ds)
    if files is not None:
        return folder_origin(where, labels, np.array([f.stat().st_size for f in files], dtype=np.int64))
    assert ds.images is not None
    sizes = np.full(len(labels), ds.images[0].numel() if len(labels) else 0)
    return {"kind": "arrays", "uri": where, "encoding": ORIGINAL,
            "fingerprint": fingerprint(labels, sizes, ds.images.contiguous().numpy().tobytes())}


def data_identity(name: str, where: str, train: ImageSet, test: ImageSet) -> dict:
    """The record of dataset ``name`` read from ``where``: source, encoding, counts, fingerprint."""
    origins = [split_origin(ds, where) for ds in (train, test)]
    joined = hashlib.sha256(":".join(o["fingerprint"] for o in origins).encode()).hexdigest()
    return {"dataset": name, "kind": origins[0]["kind"], "uri": origins[0]["uri"],
            "encoding": origins[0]["encoding"], "counts": {"train": len(train), "test": len(test)},
            "fingerprint": joined}


def describe(identity: dict) -> str:
    """``identity`` in words, for the refusal line."""
    enc, name, where = identity["encoding"], identity["dataset"], identity["uri"]
    what = (f"{name} re-encoded at short side {enc['short_side']} q{enc['quality']}" if enc["kind"] == "jpeg"
            else f"the original images of {name}")
    if identity["kind"] == "pack":
        return f"a pack of {what} at {where}"
    if identity["kind"] == "folder":
        return f"{what} in {where}"
    return f"the decoded images of {name} from {where}"


def check_same_source(recorded: dict, now: dict, record: str) -> None:
    """Refuse data other than the recorded: another encoding or other images (fingerprint).
    The kind may change (a folder's pack of original bytes is the folder's data)."""
    if recorded["encoding"] == now["encoding"] and recorded["fingerprint"] == now["fingerprint"]:
        return
    a, b = describe(now), describe(recorded)
    changed = (f" (whose images have changed: fingerprint {now['fingerprint'][:12]}, recorded "
               f"{recorded['fingerprint'][:12]})" if a == b else "")
    raise DataError(f"data.root is {a}, but this study was started from {b}{changed} ({record}); "
                    f"use the data it was started with or a new --root")
