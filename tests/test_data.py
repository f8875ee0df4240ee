"""Real shared datasets: counts, labels, stable ids, the split, loaders and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from folders import garble, images, tiny_folder, truncate

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
    cfg = _cfg(shared_data, cache_dir, name="imagefolder", root=str(shared_data / "tiny-imagenet-10.tar.gz"),
               image_size=64)
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
    with pytest.raises(DataError, match="data.root .*missing does not exist"):
        load_datasets(DataConfig(name="mnist", root=str(tmp_path / "missing"), cache_dir=str(cache_dir)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="data.root .*nothing is an empty folder"):
        load_datasets(DataConfig(name="mnist", root=str(tmp_path / "nothing"), cache_dir=str(cache_dir)))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("not mnist")
    with pytest.raises(DataError, match="no mnist data under"):
        load_datasets(DataConfig(name="mnist", root=str(tmp_path / "other"), cache_dir=str(cache_dir)))
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


def _folder_cfg(folder: Path, cache: Path, **kw: object) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(folder), cache_dir=str(cache), image_size=16, **kw)  # type: ignore[arg-type]


def test_corrupt_image_fails_naming_it_also_from_the_cache(shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_folder(shared_data, tmp_path / "data")
    bad = images(folder)[5]
    original = truncate(bad)
    cache = tmp_path / "cache"
    for _ in range(2):  # the second load hits the decode cache and must fail the same way
        with pytest.raises(DataError, match=f"cannot decode {bad}: Image is incomplete or truncated.*corrupt=skip"):
            load_datasets(_folder_cfg(folder, cache))
    assert len(list((cache / "decoded").glob("*.npy"))) == 1  # the train split, with its unreadable list
    bad.write_bytes(original)  # repaired: a new cache key, a clean load
    assert len(load_datasets(_folder_cfg(folder, cache)).train) == 12
    assert len(list((cache / "decoded").glob("*.npy"))) == 3  # + the repaired train split and the val split


def test_skip_leaves_unreadable_images_out_before_ids_are_assigned(shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_folder(shared_data, tmp_path / "data")
    clean = tiny_folder(shared_data, tmp_path / "clean")
    truncate(images(folder)[5])
    garble(images(folder)[0])
    garble(images(folder, "val")[3])
    for name in (images(clean)[5], images(clean)[0], images(clean, "val")[3]):
        name.unlink()
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="n01443537_0.JPEG: cannot identify image file .*1 more unreadable"):
        load_datasets(_folder_cfg(folder, cache))
    first = load_datasets(_folder_cfg(folder, cache, corrupt="skip"))
    again = load_datasets(_folder_cfg(folder, cache, corrupt="skip"))  # from the decode cache
    ref = load_datasets(_folder_cfg(clean, cache))  # the same folder without the damaged files
    for ds in (first, again):
        assert [p for p, _ in ds.train.skipped] == ["n01443537/n01443537_0.JPEG", "n01629819/n01629819_1.JPEG"]
        assert [p for p, _ in ds.test.skipped] == ["n01629819/" + images(folder, "val")[3].name]
        assert "truncated" in ds.train.skipped[1][1]
        # Ids are the sorted order of the readable files: exactly the ids of the repaired folder.
        assert ds.train.paths == ref.train.paths and torch.equal(ds.train.labels, ref.train.labels)
        assert torch.equal(ds.train.images, ref.train.images) and torch.equal(ds.test.images, ref.test.images)


def test_file_backed_sets_check_headers_then_fail_on_decode(shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_folder(shared_data, tmp_path / "data")
    garble(images(folder)[2])
    cache = tmp_path / "cache"
    lazy = {"max_decoded_gb": 0.0, "loader_workers": 1}
    with pytest.raises(DataError, match="n01443537_10.JPEG: cannot identify image file"):
        load_datasets(_folder_cfg(folder, cache, **lazy))
    ds = load_datasets(_folder_cfg(folder, cache, corrupt="skip", **lazy))
    assert not ds.train.in_memory and len(ds.train) == 11 and len(list((cache / "checked").glob("*.json"))) == 2
    truncate(images(folder)[6])  # the header still parses: found only when a loader worker decodes it
    ds = load_datasets(_folder_cfg(folder, cache, corrupt="skip", **lazy))
    assert len(ds.train) == 11 and len(list((cache / "checked").glob("*.json"))) == 3  # a changed file: checked again
    with pytest.raises(DataError, match="cannot decode .*n01629819_10.JPEG: Image is incomplete or truncated.*--root"):
        for _ in ds.batches("train", None, 4):
            pass
