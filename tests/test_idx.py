"""IDX files: MNIST read as torchvision reads it, Fashion-MNIST and any ``idx`` set from a folder
of its official files (written here from real MNIST rows), and one-line errors for bad files."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from coreset.config import ConfigError, DataConfig, config_from_dict
from coreset.data import DataError, load_datasets
from coreset.data.idx import read_idx

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
KANA = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]  # KMNIST's ten classes
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TRAIN, TEST = 200, 50


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX encoding of a uint8 or int32 array (gzip when ``path`` ends in ``.gz``)."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


@pytest.fixture(scope="module")
def torchvision_mnist(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared MNIST files decompressed into torchvision's ``MNIST/raw`` layout, read by torchvision."""
    root = tmp_path_factory.mktemp("tv")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        with gzip.open(shared_data / "mnist" / f"{name}.gz") as fin, open(raw / name, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return root


@pytest.fixture(scope="module")
def rows(torchvision_mnist: Path) -> dict[str, np.ndarray]:
    """The first real MNIST rows (as torchvision reads them) that the small IDX sets are made of."""
    train = torchvision.datasets.MNIST(str(torchvision_mnist), train=True)
    test = torchvision.datasets.MNIST(str(torchvision_mnist), train=False)
    return {FILES[0]: train.data[:TRAIN].numpy(), FILES[1]: train.targets[:TRAIN].numpy().astype(np.uint8),
            FILES[2]: test.data[:TEST].numpy(), FILES[3]: test.targets[:TEST].numpy().astype(np.uint8)}


def idx_folder(folder: Path, rows: dict[str, np.ndarray], prefix: str = "", suffix: str = ".gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in rows.items():
        write_idx(folder / f"{prefix}{name}{suffix}", array)
    return folder


def _cfg(root: Path, cache: Path, **kw: object) -> DataConfig:
    return DataConfig(root=str(root), cache_dir=str(cache), **kw)  # type: ignore[arg-type]


def _one_line_error(cfg: DataConfig, match: str) -> str:
    with pytest.raises(DataError, match=match) as e:
        load_datasets(cfg)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_mnist_reads_as_torchvision_reads_it(shared_data: Path, torchvision_mnist: Path, tmp_path: Path) -> None:
    ours = load_datasets(_cfg(shared_data, tmp_path, name="mnist"))  # the official .gz files in root/mnist
    flat = load_datasets(_cfg(torchvision_mnist / "MNIST" / "raw", tmp_path, name="mnist"))  # decompressed, in root
    tv_layout = load_datasets(_cfg(torchvision_mnist, tmp_path, name="mnist"))  # torchvision's own layout
    for train in (True, False):
        tv = torchvision.datasets.MNIST(str(torchvision_mnist), train=train)
        for ds in (ours, flat, tv_layout):
            split = ds.train if train else ds.test
            assert torch.equal(split.images, tv.data.unsqueeze(1)) and torch.equal(split.labels, tv.targets)
            assert split.classes == tv.classes and split.channels == 1
    assert ours.size == 28 and ours.spec.num_classes == 10


def test_writer_round_trips_and_matches_the_official_bytes(shared_data: Path, rows: dict[str, np.ndarray],
                                                            tmp_path: Path) -> None:
    for name in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        official = gzip.decompress((shared_data / "mnist" / f"{name}.gz").read_bytes())
        array = read_idx(shared_data / "mnist" / f"{name}.gz")
        write_idx(tmp_path / name, array)
        assert (tmp_path / name).read_bytes() == official
    for name, array in rows.items():
        write_idx(tmp_path / f"{name}.gz", array)
        back = read_idx(tmp_path / f"{name}.gz")
        assert back.dtype == array.dtype and np.array_equal(back, array)
    wide = np.arange(-3, 3, dtype=np.int32)  # a multi-byte type is read big-endian
    write_idx(tmp_path / "wide", wide)
    back = read_idx(tmp_path / "wide")
    assert back.dtype.isnative and back.tolist() == wide.tolist()


def test_fashion_mnist_from_its_four_official_files(shared_data: Path, rows: dict[str, np.ndarray],
                                                     tmp_path: Path) -> None:
    idx_folder(tmp_path / "fashion_mnist", rows)
    for root in (tmp_path, tmp_path / "fashion_mnist"):
        ds = load_datasets(_cfg(root, tmp_path / "cache", name="fashion_mnist"))
        assert (len(ds.train), len(ds.test), ds.size) == (TRAIN, TEST, 28)
        assert ds.train.classes == FASHION_CLASSES and ds.test.classes == FASHION_CLASSES
        assert (ds.train.labels.tolist() == rows[FILES[1]].tolist()
                and ds.test.labels.tolist() == rows[FILES[3]].tolist())
        assert torch.equal(ds.test.images[:, 0], torch.from_numpy(rows[FILES[2]]))
    x, y, _ = next(iter(ds.batches("train", np.arange(16), 16, train=True)))
    assert x.shape == (16, 1, 28, 28) and y.tolist() == rows[FILES[1]][:16].tolist()
    # the shared folder holds MNIST, not Fashion-MNIST: never taken for it
    _one_line_error(_cfg(shared_data, tmp_path / "cache", name="fashion_mnist"), "no fashion_mnist data under")


def test_idx_folder_names_its_classes(rows: dict[str, np.ndarray], tmp_path: Path) -> None:
    kmnist = idx_folder(tmp_path / "kmnist", rows)
    ds = load_datasets(_cfg(kmnist, tmp_path / "cache", name="idx", classes=tuple(KANA)))
    assert (len(ds.train), len(ds.test), ds.train.num_classes, ds.size) == (TRAIN, TEST, 10, 28)
    assert ds.train.classes == KANA and ds.train.labels.tolist() == rows[FILES[1]].tolist()
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(rows[FILES[0]]))
    x, _, _ = next(iter(ds.batches("test", None, 8)))
    assert x.shape == (8, 1, 28, 28)


def test_emnist_prefix_decompressed_and_transposed(rows: dict[str, np.ndarray], tmp_path: Path) -> None:
    emnist = idx_folder(tmp_path / "emnist", rows, prefix="emnist-digits-", suffix="")
    (emnist / "emnist-digits-mapping.txt").write_text("0 48\n")
    ds = load_datasets(_cfg(emnist, tmp_path / "cache", name="idx", classes=tuple("0123456789"), transpose=True))
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(rows[FILES[0]]).transpose(1, 2))
    assert ds.test.labels.tolist() == rows[FILES[3]].tolist()
    idx_folder(emnist, rows, prefix="emnist-mnist-")
    _one_line_error(_cfg(emnist, tmp_path / "cache", name="idx", classes=tuple("0123456789")),
                    r"holds IDX files of several datasets \(prefixes 'emnist-digits-', 'emnist-mnist-'\)")


def test_labels_must_have_names(rows: dict[str, np.ndarray], tmp_path: Path) -> None:
    folder = idx_folder(tmp_path / "kmnist", rows)
    cfg = _cfg(folder, tmp_path / "cache", name="idx", classes=tuple(KANA[:5]))
    _one_line_error(cfg, r"run 0\.\.9, outside 0\.\.4 for the 5 class names")


def test_truncated_garbled_and_mismatched_files_fail_in_one_line(rows: dict[str, np.ndarray], tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "fashion_mnist", tmp_path / "cache", name="fashion_mnist")
    folder = idx_folder(tmp_path / "fashion_mnist", rows)
    images = folder / f"{FILES[0]}.gz"
    good = images.read_bytes()
    images.write_bytes(good[: len(good) // 2])
    _one_line_error(cfg, f"cannot decompress {images}")
    images.write_bytes(gzip.compress(gzip.decompress(good)[:-100]))
    _one_line_error(cfg, f"{images} is truncated: its header says 200x28x28 uint8 items")
    images.write_bytes(gzip.compress(gzip.decompress(good) + b"\0"))
    _one_line_error(cfg, f"{images} is garbled")
    images.write_bytes(gzip.compress(b"\x08\x03" + gzip.decompress(good)[2:]))
    _one_line_error(cfg, f"{images} is not an IDX file")
    images.write_bytes(good)
    write_idx(folder / f"{FILES[1]}.gz", rows[FILES[1]][:-1])
    _one_line_error(cfg, f"{images} holds 200 images but {folder / FILES[1]}.gz holds 199 labels")
    (folder / f"{FILES[3]}.gz").unlink()
    _one_line_error(cfg, "holds IDX files but not t10k-labels-idx1-ubyte")
    _one_line_error(_cfg(tmp_path, tmp_path / "cache", name="idx", classes=("a", "b")), "no IDX files under")


@pytest.mark.parametrize("data, message", [
    ({"name": "idx"}, "data.name=idx needs data.classes"),
    ({"name": "mnist", "classes": ["a", "b"]}, "apply only to data.name=idx, not mnist"),
    ({"name": "fashion_mnist", "transpose": True}, "apply only to data.name=idx, not fashion_mnist"),
    ({"name": "idx", "classes": ["a", "b", "a"]}, "must name each class once"),
])
def test_idx_config_is_checked(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data": data})


def test_idx_classes_from_yaml_scalars() -> None:
    cfg = config_from_dict({"data": {"name": "idx", "classes": [0, 1, "a"], "transpose": True}})
    assert cfg.data.classes == ("0", "1", "a") and cfg.data.transpose is True
