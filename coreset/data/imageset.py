"""Datasets as the rest of the system sees them: indexable by canonical ``sample_id``.

Small datasets (MNIST to CIFAR, Tiny-ImageNet) are decoded once into a uint8 tensor so
that the 2 CPU cores of a laptop spend their time computing, not decoding JPEGs.
ImageNet-size folders stay on disk and are decoded per batch by loader workers.
A file that cannot be decoded is named in a one-line :class:`DataError`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from coreset.errors import DataError


@dataclass
class ImageSet:
    """Images of one split in canonical order; ``sample_id`` is the row index.

    Exactly one of ``images`` (decoded, uint8 N×C×H×W) and ``files`` (paths, decoded
    lazily) is set. ``paths`` are relative to the split folder for folder datasets;
    ``skipped`` lists ``(path, reason)`` of unreadable files left out (``data.corrupt=skip``)
    before the ids were assigned.
    """

    labels: torch.Tensor
    classes: list[str]
    channels: int
    images: torch.Tensor | None = None
    files: list[Path] | None = None
    paths: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.files is None):
            raise ValueError("an ImageSet holds either decoded images or files, not both")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def decode(self, index: int) -> Image.Image:
        """One image as PIL (only for file-backed sets); a DataError names an unreadable file."""
        assert self.files is not None
        try:
            with Image.open(self.files[index]) as im:
                return im.convert("RGB" if self.channels == 3 else "L")
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
            raise DataError(f"cannot decode {self.files[index]}: {reason(e)}") from None


def reason(e: BaseException) -> str:
    """One line saying why a file could not be read."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def decode_files(files: Sequence[Path], channels: int, size: int | None) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """Decode image files into one uint8 tensor (N, C, S, S); resize when ``size`` is given.

    Images not already ``size`` px square are resized on the shorter side and
    center-cropped, the eval transform of ImageNet practice. Files PIL cannot decode
    (truncated, garbled, not an image) are left out of the tensor and returned as
    ``(index, reason)``, so that the caller applies the ``data.corrupt`` policy.
    """
    mode = "RGB" if channels == 3 else "L"
    out: np.ndarray | None = None
    bad: list[tuple[int, str]] = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if size is not None and im.size != (size, size):
                    im = resize_center_crop(im, size)
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
            bad.append((i, reason(e)))
            continue
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if out is None:
            out = np.empty((len(files), arr.shape[0], arr.shape[1], arr.shape[2]), dtype=np.uint8)
        if arr.shape != out.shape[1:]:
            raise DataError(f"{f}: image is {arr.shape[1]}x{arr.shape[0]}, "
                            f"others are {out.shape[2]}x{out.shape[1]}; set data.image_size")
        out[i - len(bad)] = arr
    if out is None:
        return torch.empty((0, channels, size or 1, size or 1), dtype=torch.uint8), bad
    return torch.from_numpy(out[: len(files) - len(bad)]).permute(0, 3, 1, 2).contiguous(), bad


def unreadable_headers(files: Sequence[Path]) -> list[tuple[int, str]]:
    """``(index, reason)`` of files whose image header PIL cannot parse (empty, garbled, not an
    image): ~40 µs a file, against milliseconds for a full decode of an ImageNet JPEG. Damage
    after the header (a truncated JPEG) shows only when the image is decoded."""
    bad = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im.size  # noqa: B018 - parsed with the header
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
            bad.append((i, reason(e)))
    return bad


def resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))
