"""Datasets as the rest of the system sees them: indexable by canonical ``sample_id``.

Small datasets (MNIST to CIFAR, Tiny-ImageNet) are decoded once into a uint8 tensor so
that the 2 CPU cores of a laptop spend their time computing, not decoding JPEGs.
ImageNet-size folders stay on disk and are decoded per batch by loader workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image


@dataclass
class ImageSet:
    """Images of one split in canonical order; ``sample_id`` is the row index.

    Exactly one of ``images`` (decoded, uint8 N×C×H×W) and ``files`` (paths, decoded
    lazily) is set. ``paths`` are relative to the split folder for folder datasets.
    """

    labels: torch.Tensor
    classes: list[str]
    channels: int
    images: torch.Tensor | None = None
    files: list[Path] | None = None
    paths: list[str] | None = None

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
        """One image as PIL (only for file-backed sets)."""
        assert self.files is not None
        with Image.open(self.files[index]) as im:
            return im.convert("RGB" if self.channels == 3 else "L")


def decode_files(files: Sequence[Path], channels: int, size: int | None) -> torch.Tensor:
    """Decode image files into one uint8 tensor (N, C, S, S); resize when ``size`` is given.

    Images not already ``size`` px square are resized on the shorter side and
    center-cropped, the eval transform of ImageNet practice.
    """
    mode = "RGB" if channels == 3 else "L"
    out: np.ndarray | None = None
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = resize_center_crop(im, size)
            arr = np.asarray(im, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if out is None:
            out = np.empty((len(files), arr.shape[0], arr.shape[1], arr.shape[2]), dtype=np.uint8)
        if arr.shape != out.shape[1:]:
            raise ValueError(f"{f}: image is {arr.shape[1]}x{arr.shape[0]}, others are {out.shape[2]}x{out.shape[1]}; set data.image_size")
        out[i] = arr
    if out is None:
        return torch.empty((0, channels, size or 1, size or 1), dtype=torch.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))
