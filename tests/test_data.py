"""Real shared datasets: counts, labels, stable ids, the split, loaders and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coreset.config import DataConfig
from coreset.data import DataError, load_datasets, probe_ids, train_val_split


def _cfg(shared: Path, cache: Path, **kw: object) -> DataConfig:
    base = {"root": str(shared), "cache_dir": str(cache)}
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


def test_mnist_counts_labels_and_stable_ids(shared_data: Path, cache_dir: Path) -> None:
    a = load_datasets(_cfg(shared_data, cache_dir, name="mnist"))
    b = load_datasets(_cfg(shared_data, cache_dir, name="mnist"))
    assert (len(a.train), len(a.test)) == (60000, 10000)
    assert a.train.images.shape == (60000, 1, 28, 28) and a.train.images.dtype == torch.uint8
    assert a.train.labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # torchvision's canonical order
    assert torch.bincount(a.train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.spec.num_classes == 10 and a.size == 28


def test_cifar10_jpeg_folder(shared_data: Path, cache_dir: Path) -> None:
    ds = load_datasets(_cfg(shared_data, cache_dir, name="cifar10"))
    assert (len(ds.train), len(ds.test)) == (50000, 10000)
    assert ds.train.images.shape[1:] == (3, 32, 32)
    assert ds.train.classes[:3] == ["airplane", "automobile", "bird"]
    assert torch.bincount(ds.train.labels).tolist() == [5000] * 10
    assert ds.train.paths is not None and ds.train.paths == sorted(ds.train.paths)  # canonical: sorted paths


def test_tiny_imagenet_archive_in_imagenet_layout(shared_data: Path, cache_dir: Path) -> None:
    cfg = _cfg(shared_data, cache_dir, name="imagefolder", root=str(shared_data / "tiny-imagenet-10.tar.gz"), image_size=64)
    ds = load_datasets(cfg)
    assert (len(ds.train), len(ds.test), ds.train.num_classes) == (5000, 500, 10)
    assert all(c.startswith("n") for c in ds.train.classes)
    x, y, ids = next(iter(ds.batches("train", np.arange(16), 16, train=True, shuffle=True)))
    assert x.shape == (16, 3, 64, 64) and x.dtype == torch.float32


def test_file_backed_folder_streams_like_decoded(shared_data: Path, cache_dir: Path) -> None:
    root = str(shared_data / "tiny-imagenet-10.tar.gz")
    mem = load_datasets(_cfg(shared_data, cache_dir, name="imagefolder", root=root, image_size=64))
    disk = load_datasets(_cfg(shared_data, cache_dir, name="imagefolder", root=root, image_size=64,
                              max_decoded_gb=0.0, loader_workers=0))
    assert not disk.train.in_memory
    ids = np.array([3, 250, 499])
    xm, ym, im = next(iter(mem.batches("test", ids, 8)))
    xd, yd, idd = next(iter(disk.batches("test", ids, 8)))
    assert torch.equal(ym, yd) and torch.equal(im, idd)
    assert torch.allclose(xm, xd, atol=1e-5)


def test_split_is_disjoint_reproducible_and_ten_percent() -> None:
    labels = np.arange(60000) % 10
    a = train_val_split(labels, 0.1, seed=0)
    b = train_val_split(labels, 0.1, seed=0)
    c = train_val_split(labels, 0.1, seed=1)
    assert a.equals(b) and not a.equals(c)
    val = set(a.sample_id[a.split == "val"])
    train = set(a.sample_id[a.split == "train"])
    assert len(val) == 6000 and not (val & train) and len(val | train) == 60000
    probe = probe_ids(np.array(sorted(train)), 512, seed=0)
    assert len(probe) == 512 and set(probe) <= train


def test_sharded_batches_partition_the_epoch(shared_data: Path, cache_dir: Path) -> None:
    ds = load_datasets(_cfg(shared_data, cache_dir, name="synthetic"))
    ids = np.arange(100)
    seen = []
    for rank in range(2):
        b = ds.batches("train", ids, 16, train=True, shuffle=True, seed=3, rank=rank, world=2)
        b.set_epoch(1)
        seen.append(torch.cat([sid for _, _, sid in b]))
    assert len(seen[0]) == len(seen[1]) == 50
    assert not set(seen[0].tolist()) & set(seen[1].tolist())


def test_missing_and_empty_data_fail_clearly(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(DataError, match="no mnist data under"):
        load_datasets(DataConfig(name="mnist", root=str(tmp_path / "missing"), cache_dir=str(cache_dir)))
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images under"):
        load_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "empty"), cache_dir=str(cache_dir)))


def test_class_folders_must_match(tmp_path: Path, cache_dir: Path) -> None:
    from PIL import Image

    for split, cls in (("train", "cat"), ("train", "dog"), ("val", "cat"), ("val", "eel")):
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "0.jpg")
    with pytest.raises(DataError, match="class folders .* differ: dog, eel"):
        load_datasets(DataConfig(name="imagefolder", root=str(tmp_path), cache_dir=str(cache_dir), image_size=8))
