"""IDX files (MNIST's format, shared by Fashion-MNIST, KMNIST and EMNIST), read without torchvision.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number of
dimensions), one big-endian uint32 per dimension, then the items, big-endian, row-major.
Reading it here lets any dataset in this layout load from its official files (``.gz`` or
decompressed) with one-line errors for a truncated or garbled file, where torchvision only
knows its own dataset classes and folder layout.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from coreset.data.imageset import ImageSet
from coreset.errors import DataError

__all__ = ["IDX_FILES", "find_idx_files", "idx_splits", "read_idx"]

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# role -> the name every IDX distribution gives the file, after an optional prefix (EMNIST's "emnist-balanced-")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip-compressed when it ends in ``.gz``), in
    native byte order; a DataError names the file when it is not IDX, truncated or too long."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (magic bytes {data[:4].hex() or 'missing'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: its header names {ndim} dimensions, "
                        f"the file ends after {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "garbled"
        raise DataError(f"{path} is {what}: its header says {'x'.join(map(str, dims))} {dtype.name} items "
                        f"({expected} bytes), the file holds {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut stream raises EOFError
        raise DataError(f"cannot decompress {path}: {e}") from None


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four files of the one IDX set in ``folder`` by role, or None when it holds none.

    Files may carry a common prefix (EMNIST's ``emnist-balanced-``) and be ``.gz`` or not (the
    decompressed file is taken when both are there). Two prefixes are two datasets: which one
    is meant cannot be guessed, so that stops with one line, as does a set with a file missing.
    """
    if not folder.is_dir():
        return None
    found: dict[str, dict[str, Path]] = {}  # prefix -> role -> path
    for f in sorted(folder.iterdir(), key=lambda p: (p.suffix == ".gz", p.name)):
        for role, stem in IDX_FILES.items():
            name = f.name.removesuffix(".gz")
            if name.endswith(stem) and f.is_file():
                found.setdefault(name[: -len(stem)], {}).setdefault(role, f)
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(repr(p) for p in sorted(found))
        raise DataError(f"{folder} holds IDX files of several datasets (prefixes {names}); "
                        f"move one set into a folder of its own and set data.root to it")
    files = next(iter(found.values()))
    missing = [IDX_FILES[r] for r in IDX_FILES if r not in files]
    if missing:
        raise DataError(f"{folder} holds IDX files but not {', '.join(missing)} (.gz or decompressed)")
    return files


def idx_splits(files: dict[str, Path], classes: list[str], transpose: bool = False) -> tuple[ImageSet, ImageSet]:
    """(train, test) from the four IDX files, in file order (the datasets' canonical order).

    ``transpose`` swaps each image's rows and columns: EMNIST stores its images transposed.
    """
    return (_split(files["train_images"], files["train_labels"], classes, transpose),
            _split(files["test_images"], files["test_labels"], classes, transpose))


def _split(images_path: Path, labels_path: Path, classes: list[str], transpose: bool) -> ImageSet:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path} holds {images.dtype} items of {images.ndim} dimensions, "
                        f"not uint8 N x H x W images")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{labels_path} holds {labels.dtype} items of {labels.ndim} dimensions, "
                        f"not one integer label per image")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"labels of {labels_path} run {labels.min()}..{labels.max()}, outside 0..{len(classes) - 1} "
                        f"for the {len(classes)} class names")
    if transpose:
        images = images.transpose(0, 2, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    return ImageSet(labels=torch.from_numpy(labels.astype(np.int64)), classes=list(classes), channels=1,
                    images=x.contiguous())
