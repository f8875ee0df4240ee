"""Datasets as the rest of the system sees them: indexable by canonical ``sample_id``.

Small datasets (MNIST to CIFAR, Tiny-ImageNet) are decoded once into a uint8 tensor so
that the 2 CPU cores of a laptop spend their time computing, not decoding JPEGs.
ImageNet-size folders stay on disk and are decoded per batch by loader workers.
A file that cannot be decoded is named in a one-line :class:`DataError`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from coreset.data.decode import decode_image, reason, resize_center_crop
from coreset.errors import DataError

if TYPE_CHECKING:
    from coreset.data.packed import PackedSplit


@dataclass
class ImageSet:
    """Images of one split in canonical order; ``sample_id`` is the row index.

    Exactly one of ``images`` (decoded, uint8 N×C×H×W), ``files`` (paths, decoded lazily)
    and ``pack`` (a split of a packed dataset, decoded lazily) is set. ``paths`` are relative
    to the split folder ``root`` for folder datasets (and recorded in a pack's index);
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
    root: Path | None = None
    pack: PackedSplit | None = None
    # What a study records of where the images came from (a pack's encoding and index
    # fingerprint: :mod:`coreset.data.identity`); None for folders and arrays, fingerprinted on demand.
    origin: dict | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.images, self.files, self.pack)) != 1:
            raise ValueError("an ImageSet holds one of decoded images, files or a pack split")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def source(self, index: int) -> str:
        """Where image ``index`` is read from (file-backed and packed sets), for messages."""
        return str(self.files[index]) if self.files is not None else self.pack.member(index)  # type: ignore[union-attr]

    def encoded(self, index: int) -> bytes:
        """The stored bytes of image ``index`` (file-backed and packed sets)."""
        return self.files[index].read_bytes() if self.files is not None else self.pack.read(index)  # type: ignore[union-attr]

    def decode(self, index: int) -> torch.Tensor:
        """One image as uint8 ``C×H×W`` (file-backed and packed sets); a DataError names an unreadable one."""
        data = self.encoded(index)
        try:
            return decode_image(data, self.channels)
        except Exception as e:  # noqa: BLE001 - decoders raise many types for corrupt files
            raise DataError(f"cannot decode {self.source(index)}: {reason(e)}") from None


def source_files(ds: ImageSet) -> list[Path] | None:
    """The files of a folder split (``None``: the set came decoded, e.g. torchvision's pickles)."""
    if ds.files is not None:
        return list(ds.files)
    if ds.root is not None and ds.paths is not None:
        return [ds.root / p for p in ds.paths]
    return None


def decode_files(files: Sequence[Path], channels: int, size: int | None) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """Decode image files into one uint8 tensor (N, C, S, S); resize when ``size`` is given.

    Images not already ``size`` px square are resized on the shorter side and
    center-cropped, the eval transform of ImageNet practice. Files that cannot be decoded
    (truncated, garbled, not an image) are left out of the tensor and returned as
    ``(index, reason)``, so that the caller applies the ``data.corrupt`` policy.
    """
    return decode_all((f.read_bytes() for f in files), channels, size, [str(f) for f in files])


def decode_all(encoded: Iterable[bytes], channels: int, size: int | None,
               names: Sequence[str]) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """:func:`decode_files` over encoded images (from files or a pack); ``names`` for messages."""
    out: torch.Tensor | None = None
    bad: list[tuple[int, str]] = []
    for i, data in enumerate(encoded):
        try:
            image = decode_image(data, channels)
        except Exception as e:  # noqa: BLE001 - decoders raise many types for corrupt files
            bad.append((i, reason(e)))
            continue
        if size is not None:
            image = resize_center_crop(image, size)
        if out is None:
            out = torch.empty((len(names), *image.shape), dtype=torch.uint8)
        if image.shape != out.shape[1:]:
            raise DataError(f"{names[i]}: image is {image.shape[2]}x{image.shape[1]}, "
                            f"others are {out.shape[3]}x{out.shape[2]}; set data.image_size")
        out[i - len(bad)] = image
    if out is None:
        return torch.empty((0, channels, size or 1, size or 1), dtype=torch.uint8), bad
    return out[: len(names) - len(bad)].contiguous(), bad


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
