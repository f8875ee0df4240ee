"""Find a dataset under ``data.root`` and load its train and test splits.

Resolution order for each name: the official IDX files of MNIST-like sets (read by
:mod:`coreset.data.idx`; ``idx`` names any such set, whose classes the config lists), then
torchvision's own format (its classes, downloading only when ``download`` is true), then
an ImageFolder tree, then an archive of one (extracted once into the cache, never into
the repository). A packed dataset (``jobs/pack.py``; any ``s3://`` or ``gs://`` root) is read by
:mod:`coreset.data.packed`. The shared data folder of this project holds MNIST's official files and
JPEG archives of CIFAR-10 and Tiny-ImageNet-10, all of which resolve here.

Unreadable images in a folder follow ``data.corrupt`` (see :class:`DataConfig`): ``fail``
names the file, ``skip`` leaves it out before sample ids are assigned.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch
import torchvision

from coreset.config import DataConfig
from coreset.data.cache import cached_decode, write_cache_file
from coreset.data.decode import DECODER
from coreset.data.identity import folder_origin
from coreset.data.idx import IDX_FILES, find_idx_files, idx_splits
from coreset.data.imageset import DataError, ImageSet, decode_files, unreadable_headers
from coreset.data.packed import is_pack, load_pack
from coreset.storage import StorageError

__all__ = ["DataError", "cache_dir", "load_splits", "native_size"]
log = logging.getLogger("coreset")

_TORCHVISION = {
    "mnist": ("MNIST", 1, 28),
    "fashion_mnist": ("FashionMNIST", 1, 28),
    "cifar10": ("CIFAR10", 3, 32),
    "cifar100": ("CIFAR100", 3, 32),
}
# the torchvision datasets whose official files are IDX, with torchvision's class names
_IDX_CLASSES = {"mnist": torchvision.datasets.MNIST.classes, "fashion_mnist": torchvision.datasets.FashionMNIST.classes}
_ARCHIVES = {"cifar10": "cifar10-jpg.tar.gz", "cifar100": "cifar100-jpg.tar.gz"}
_TEST_DIRS = ("test", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def cache_dir(cfg: DataConfig) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir or os.environ.get("CORESET_CACHE", "~/.cache/coreset")))


def native_size(cfg: DataConfig, train: ImageSet | None = None) -> int:
    """The image size models see: the config's, or the dataset's native one (an ``idx``
    set's is only known from its ``train`` images: the larger side)."""
    if cfg.image_size:
        return cfg.image_size
    if cfg.name == "idx" and train is not None and train.images is not None:
        return int(max(train.images.shape[-2:]))
    if cfg.name in _TORCHVISION:
        return _TORCHVISION[cfg.name][2]
    return 16 if cfg.name == "synthetic" else 224


def load_splits(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """(train, test) in canonical order for ``cfg``."""
    if cfg.name == "synthetic":
        from coreset.data.synthetic import synthetic_splits

        return synthetic_splits(cfg.synthetic_size, cfg.synthetic_classes, native_size(cfg))
    if is_pack(cfg.root):
        return load_pack(cfg.name, cfg.root, native_size(cfg), cfg.max_decoded_gb, cache_dir(cfg))
    root = Path(os.path.expanduser(cfg.root))
    if not root.exists() and not cfg.download:
        raise DataError(f"data.root {root} does not exist; set data.root to the folder that holds {cfg.name}")
    if root.is_dir() and not any(root.iterdir()) and not cfg.download:
        raise DataError(f"data.root {root} is an empty folder; set data.root to the folder that holds {cfg.name}")
    if cfg.name == "idx" or cfg.name in _IDX_CLASSES:
        files = _idx_files(cfg, root)
        if files is not None:
            classes = list(cfg.classes) if cfg.name == "idx" else list(_IDX_CLASSES[cfg.name])
            return idx_splits(files, classes, cfg.transpose)
    if cfg.name in _TORCHVISION:
        found = _torchvision_splits(cfg, root)
        if found is not None:
            return found
    folder = _find_folder(cfg, root)
    if folder is None:
        raise DataError(f"no {cfg.name} data under {root} (looked for IDX files, torchvision files, "
                        f"an ImageFolder tree and an archive); "
                        f"set data.root, or data.download=true where torchvision can download it")
    channels = _TORCHVISION[cfg.name][1] if cfg.name in _TORCHVISION else 3
    return _folder_splits(cfg, folder, channels)


# --------------------------------------------------------------------------- torchvision formats


def _torchvision_splits(cfg: DataConfig, root: Path) -> tuple[ImageSet, ImageSet] | None:
    cls_name, channels, _ = _TORCHVISION[cfg.name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError:
        if cfg.download:
            raise
        return None
    return _from_torchvision(train, channels), _from_torchvision(test, channels)


def _from_torchvision(ds: torchvision.datasets.VisionDataset, channels: int) -> ImageSet:
    data = ds.data  # type: ignore[attr-defined]
    images = torch.as_tensor(np.asarray(data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets))  # type: ignore[attr-defined]
    return ImageSet(labels=labels, classes=list(ds.classes), channels=channels, images=images.contiguous())  # type: ignore[attr-defined]


def _idx_files(cfg: DataConfig, root: Path) -> dict[str, Path] | None:
    """The four IDX files in ``root`` or ``root/<name>``; an ``idx`` set is found nowhere else."""
    for folder in (root, root / cfg.name):
        files = find_idx_files(folder)
        if files is not None:
            return files
    if cfg.name == "idx":
        raise DataError(f"no IDX files under {root} (looked for {', '.join(IDX_FILES.values())}, "
                        f"each .gz or not, after an optional common prefix); set data.root to their folder")
    return None


# --------------------------------------------------------------------------- folders and archives


def _find_folder(cfg: DataConfig, root: Path) -> Path | None:
    """A directory holding ``train/`` and ``test/`` or ``val/``, possibly inside an archive."""
    candidates = [root, root / cfg.name]
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        candidates = [_extract(root, cache_dir(cfg))]
    elif cfg.name in _ARCHIVES and (root / _ARCHIVES[cfg.name]).is_file():
        candidates.append(_extract(root / _ARCHIVES[cfg.name], cache_dir(cfg)))
    for c in list(candidates):
        if c.is_dir():
            candidates += sorted(p for p in c.iterdir() if p.is_dir())
    for c in candidates:
        if (c / "train").is_dir() and any((c / t).is_dir() for t in _TEST_DIRS):
            return c
    return None


def _extract(archive: Path, cache: Path) -> Path:
    """Extract ``archive`` once into the cache (atomically: a half extraction is never used)."""
    digest = hashlib.sha256(f"{archive.resolve()}:{archive.stat().st_size}:{archive.stat().st_mtime_ns}"
                            .encode()).hexdigest()[:16]
    target = cache / "extracted" / f"{archive.name.split('.')[0]}-{digest}"
    if target.is_dir():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot extract {archive}: {e}") from None
    try:
        tmp.rename(target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _list_folder(split_dir: Path) -> tuple[list[str], list[Path], list[int]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        for f in sorted((split_dir / c).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                files.append(f)
                labels.append(i)
    if not files:
        raise DataError(f"no images under {split_dir}")
    found = set(labels)
    empty = [c for i, c in enumerate(classes) if i not in found]
    if empty:
        raise DataError(f"class folder {split_dir / empty[0]} holds no images ({len(empty)} empty class folders)")
    return classes, files, labels


def _folder_splits(cfg: DataConfig, folder: Path, channels: int) -> tuple[ImageSet, ImageSet]:
    test_dir = next(folder / t for t in _TEST_DIRS if (folder / t).is_dir())
    train_classes, train_files, train_labels = _list_folder(folder / "train")
    test_classes, test_files, test_labels = _list_folder(test_dir)
    if train_classes != test_classes:
        only = sorted(set(train_classes) ^ set(test_classes))
        raise DataError(f"class folders of {folder / 'train'} and {test_dir} differ: {', '.join(only[:5])}")
    size = native_size(cfg)
    est_gb = (len(train_files) + len(test_files)) * channels * size * size / 1e9
    decoded = est_gb <= cfg.max_decoded_gb
    sets = []
    for split_dir, files, labels in ((folder / "train", train_files, train_labels),
                                     (test_dir, test_files, test_labels)):
        stats = [f.stat() for f in files]  # one stat a file: the cache keys and the study's record of the data
        if decoded:
            images, bad = _decoded_cached(files, stats, channels, size, cache_dir(cfg))
        else:
            bad = _checked_headers(files, stats, cache_dir(cfg))
        size_of = {f: st.st_size for f, st in zip(files, stats, strict=True)}
        files, labels, skipped = _apply_corrupt_policy(cfg, split_dir, files, labels, bad)
        paths = [str(f.relative_to(split_dir)) for f in files]
        lab = torch.tensor(labels, dtype=torch.int64)
        origin = folder_origin(cfg.root, lab.numpy(), np.array([size_of[f] for f in files], dtype=np.int64))
        held = {"images": images} if decoded else {"files": files}
        sets.append(ImageSet(lab, train_classes, channels, paths=paths, skipped=skipped, root=split_dir,
                             origin=origin, **held))
    return sets[0], sets[1]


def _apply_corrupt_policy(cfg: DataConfig, split_dir: Path, files: list[Path], labels: list[int],
                          bad: list[tuple[int, str]]) -> tuple[list[Path], list[int], list[tuple[str, str]]]:
    """``fail``: one line naming the first unreadable file. ``skip``: drop the unreadable files
    before sample ids are assigned, so ids stay the sorted order of the readable ones."""
    if not bad:
        return files, labels, []
    if cfg.corrupt == "fail":
        i, why = bad[0]
        more = f" ({len(bad) - 1} more unreadable under {split_dir})" if len(bad) > 1 else ""
        raise DataError(f"cannot decode {files[i]}: {why}{more}; repair or remove it, "
                        f"or set data.corrupt=skip to leave unreadable images out")
    drop = {i for i, _ in bad}
    skipped = [(str(files[i].relative_to(split_dir)), why) for i, why in bad]
    log.warning("%s: left out %d unreadable image(s) (data.corrupt=skip), first %s", split_dir, len(bad), skipped[0][0])
    keep = [i for i in range(len(files)) if i not in drop]
    return [files[i] for i in keep], [labels[i] for i in keep], skipped


def _fingerprint(files: list[Path], stats: list[os.stat_result], *extra: object) -> str:
    """Changes when a file is added, removed, renamed, rewritten or touched (``stats``: each file's)."""
    h = hashlib.sha256()
    for f, st in zip(files, stats, strict=True):
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(":".join(map(str, extra)).encode())
    return h.hexdigest()[:20]


def _decoded_cached(files: list[Path], stats: list[os.stat_result], channels: int, size: int,
                    cache: Path) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """Decode once per machine (:func:`coreset.data.cache.cached_decode`), keyed by the file listing."""
    path = cache / "decoded" / f"{_fingerprint(files, stats, channels, size, DECODER)}.npy"
    return cached_decode(path, lambda: decode_files(files, channels, size))


def _checked_headers(files: list[Path], stats: list[os.stat_result], cache: Path) -> list[tuple[int, str]]:
    """Unreadable headers of a file-backed set, checked once per machine and file listing."""
    path = cache / "checked" / f"{_fingerprint(files, stats, 'headers')}.json"
    if path.is_file():
        return [(int(i), str(r)) for i, r in json.loads(path.read_text())]
    bad = unreadable_headers(files)
    try:
        write_cache_file(path, json.dumps(bad).encode())
    except StorageError as e:
        log.warning("cannot cache the header check in %s: %s", path.parent, e)
    return bad
