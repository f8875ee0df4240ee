"""Small ImageFolder trees of real Tiny-ImageNet JPEGs, and ways to damage a file."""
from __future__ import annotations

import tarfile
from pathlib import Path


def tiny_folder(shared: Path, dst: Path, classes: int = 3, train: int = 4, val: int = 2) -> Path:
    """``dst/{train,val}/<wnid>/*.JPEG``: the first ``train``/``val`` images of the first
    ``classes`` classes of ``tiny-imagenet-10.tar.gz`` (sorted, so every call picks the same)."""
    with tarfile.open(shared / "tiny-imagenet-10.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".JPEG")]
        wnids = sorted({m.name.split("/")[2] for m in members})[:classes]
        for split, n in (("train", train), ("val", val)):
            for wnid in wnids:
                chosen = sorted((m for m in members if m.name.split("/")[1:3] == [split, wnid]),
                                key=lambda m: m.name)[:n]
                for m in chosen:
                    target = dst / split / wnid / Path(m.name).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(m).read())  # type: ignore[union-attr]
    return dst


def images(folder: Path, split: str = "train") -> list[Path]:
    """The split's files in canonical (sorted) order."""
    return sorted((folder / split).rglob("*.JPEG"))


def truncate(path: Path) -> bytes:
    """Cut a JPEG in half: its header still parses, decoding fails (TorchCodec: 'Image is incomplete or
    truncated').
    Returns the original bytes (to repair it)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data


def garble(path: Path) -> None:
    """Zero a JPEG's first bytes: PIL cannot even identify it."""
    data = path.read_bytes()
    path.write_bytes(b"\0" * 16 + data[16:])
