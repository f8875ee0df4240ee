"""Streaming a large pack (issue 16): class-aligned shards, the gradient stage's work units
= the pack's shards, shuffled epochs read shard by shard through a shuffle buffer, bounded
retries of transient read errors. Real Tiny-ImageNet JPEGs; faults are injected through a
pyarrow filesystem wrapped around the local one."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch
from folders import tiny_folder
from test_pack import _cfg, pack_here

from coreset.config import ConfigError, DataConfig, StudyConfig
from coreset.data import DataError, Datasets, load_datasets, packed
from coreset.data.cut import class_cut
from coreset.data.imageset import ImageSet
from coreset.data.pack import PackSettings, plan_pack
from coreset.stages import gradients, score
from coreset.stages.train import load_split
from coreset.storage import StudyRoot


class Faulty(pafs.FileSystemHandler):
    """The local filesystem, counting opens of the pack's shards; the first ``fail_opens`` of
    them raise a transient ``OSError``, and the first ``cut_streams`` streams break after
    ``cut_after`` bytes (a connection reset mid-shard)."""

    def __init__(self, fail_opens: int = 0, cut_streams: int = 0, cut_after: int = 4096) -> None:
        self.fs = pafs.LocalFileSystem()
        self.fail_opens, self.cut_streams, self.cut_after = fail_opens, cut_streams, cut_after
        self.streams: list[str] = []
        self.ranges: list[str] = []

    def _open(self, path: str, opens: list[str]) -> None:
        if path.endswith(".tar"):
            opens.append(Path(path).name)
            if self.fail_opens:
                self.fail_opens -= 1
                raise OSError("injected: connection reset")

    def open_input_stream(self, path: str) -> pa.NativeFile:
        self._open(path, self.streams)
        stream = self.fs.open_input_stream(path)
        if path.endswith(".tar") and self.cut_streams:
            self.cut_streams -= 1
            return pa.PythonFile(_Breaks(stream, self.cut_after), mode="r")
        return stream

    def open_input_file(self, path: str) -> pa.NativeFile:
        self._open(path, self.ranges)
        return self.fs.open_input_file(path)

    def get_type_name(self) -> str:
        return "faulty"

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def normalize_path(self, path: str) -> str:
        return path

    def equals(self, other: object) -> bool:
        return other is self

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise OSError("read-only test filesystem")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only


class _Breaks:
    """A readable stream that raises ``OSError`` once ``budget`` bytes were read."""

    def __init__(self, inner: pa.NativeFile, budget: int) -> None:
        self.inner, self.budget, self.closed = inner, budget, False

    def read(self, n: int = -1) -> bytes:
        if self.budget <= 0:
            raise OSError("injected: connection reset mid-stream")
        data = self.inner.read(min(n, self.budget) if n >= 0 else self.budget)  # the bytes before the reset
        self.budget -= len(data)
        return data

    def close(self) -> None:
        self.inner.close()
        self.closed = True


@pytest.fixture(scope="module")
def tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(folder, its pack, the cache): 3 classes x 20 train + 5 val real JPEGs; each class of 20
    is heavier than a shard, so it gets three of its own (9 train shards)."""
    base = tmp_path_factory.mktemp("stream")
    folder = tiny_folder(shared_data, base / "folder", classes=3, train=20, val=5)
    pack_here(_cfg(folder, base / "cache"), base / "pack")
    return folder, base / "pack", base / "cache"


def _lazy(tiny: tuple[Path, Path, Path], **kw: object) -> Datasets:
    _, pack, cache = tiny
    return load_datasets(_cfg(pack, cache, **{"max_decoded_gb": 0.0, "loader_workers": 0, **kw}))


def _faulty(ds: Datasets, handler: Faulty) -> Faulty:
    """Route the train split's reads in this process through ``handler``."""
    assert ds.train.pack is not None
    ds.train.pack.root.fs = pafs.PyFileSystem(handler)
    return handler


def _epoch(ds: Datasets, ids: np.ndarray, epoch: int = 1, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    batches = ds.batches("train", ids, 8, train=True, shuffle=True, seed=5, **kw)
    batches.set_epoch(epoch)
    out = list(batches)
    assert len(out) == len(batches)
    return torch.cat([i for _, _, i in out]), torch.cat([x for x, _, _ in out])


def test_class_cut_groups_whole_classes_and_splits_a_heavy_one() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3, 3, 4])
    assert class_cut(labels, np.ones(13), 4) == [(0, 2), (2, 4), (6, 3), (9, 3), (12, 1)]
    weights = np.array([1, 1, 1, 1, 1, 1, 9, 9, 9, 9, 9, 9, 1])  # class 3 weighs 54: ceil(54/12) = 5 parts
    assert class_cut(labels, weights, 12) == [(0, 6), (6, 2), (8, 1), (9, 1), (10, 1), (11, 1), (12, 1)]
    assert class_cut(labels, np.full(13, 100), 12) == [(k, 1) for k in range(13)]  # an image over the target


def test_pack_cuts_sorted_labels_at_class_bounds_and_unsorted_by_size(tiny: tuple[Path, Path, Path]) -> None:
    _, pack, _ = tiny
    manifest = json.loads((pack / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert train["cut"] == "class" and [(s["first"], s["count"]) for s in train["shards"]] == \
        [(0, 7), (7, 7), (14, 6), (20, 7), (27, 7), (34, 6), (40, 7), (47, 7), (54, 6)]  # 3 near-equal parts a class
    assert [(s["first"], s["count"]) for s in manifest["splits"]["test"]["shards"]] == [(0, 5), (5, 5), (10, 5)]

    def decoded(labels: list[int]) -> ImageSet:
        images = torch.zeros(len(labels), 1, 10, 10, dtype=torch.uint8)
        return ImageSet(torch.tensor(labels), ["a", "b"], 1, images=images)

    settings = PackSettings(shard_mb=(3 * (100 + 2046)) / 1e6)  # 3 images a shard
    plan = plan_pack("t", decoded([0, 0, 0, 0, 1, 1]), decoded([1, 0, 1, 0, 1]), settings)
    assert plan["splits"]["train"]["cut"] == "class" and plan["splits"]["train"]["shards"] == [[0, 2], [2, 2], [4, 2]]
    assert plan["splits"]["test"]["cut"] == "size" and plan["splits"]["test"]["shards"] == [[0, 3], [3, 2]]


def _study(pack: Path, cache: Path, **data: object) -> StudyConfig:
    return StudyConfig(name="t", data=_cfg(pack, cache, **data))


def test_gradient_shards_are_the_streaming_packs_shards(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    folder, pack, cache = tiny
    cfg = _study(pack, cache, max_decoded_gb=0.0, loader_workers=0)
    split = load_split(cfg, StudyRoot(str(tmp_path / "root")), load_datasets(cfg.data))
    tasks, manifest, _ = gradients.table_tasks(cfg, split, 5, 5)
    tasks = [t for t in tasks if t.final]
    val = set(split.sample_id[split.split == "val"])
    shards = json.loads((pack / "manifest.json").read_text())["splits"]["train"]["shards"]
    train_ids = [[i for i in range(s["first"], s["first"] + s["count"]) if i not in val] for s in shards]
    assert len(val) == 6 and [t.ids.tolist() for t in tasks] == train_ids and manifest["layout"] == "pack_shards"
    units = score.class_units(manifest)  # every class in exactly one unit of shards
    assert units == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert manifest["shard_labels"] == [[c, c] for c in range(3) for _ in range(3)]
    for other in (_study(pack, cache), _study(folder, cache, max_decoded_gb=0.0)):  # decoded pack, folder: own cut
        tasks, manifest, _ = gradients.table_tasks(dataclasses.replace(other, gradients=dataclasses.replace(
            other.gradients, shard_size=100)), split, 5, 5)
        assert len([t for t in tasks if t.final]) == 1 and manifest["layout"] == "class_shards"
    ds = _lazy(tiny)  # a worker reads its shard in one request
    handler = _faulty(ds, Faulty())
    list(ds.batches("train", tasks_ids := np.array(train_ids[3]), 4))
    assert handler.ranges == ["train-000003.tar"] and handler.streams == [] and len(tasks_ids) >= 5


def test_shuffled_epoch_reads_each_shard_once_through_the_buffer(tiny: tuple[Path, Path, Path]) -> None:
    ds = _lazy(tiny, shuffle_buffer=12)
    handler = _faulty(ds, Faulty())
    ids = np.setdiff1d(np.arange(60), [3, 17, 18, 44])
    order, x = _epoch(ds, ids)
    assert sorted(order.tolist()) == ids.tolist()  # every id once
    assert sorted(handler.ranges) == [f"train-{k:06d}.tar" for k in range(9)] and handler.streams == []
    shards = ds.train.pack.shard_of[order.numpy()]
    assert len(set(shards[:8].tolist())) >= 2  # a batch mixes shards
    assert not np.array_equal(order.numpy(), np.sort(order.numpy()))
    again, x_again = _epoch(ds, ids)
    assert torch.equal(order, again) and torch.equal(x, x_again)
    assert not torch.equal(order, _epoch(ds, ids, epoch=2)[0])


def test_runs_of_shuffle_chunk_images_are_read_in_an_order_over_every_shard(tiny: tuple[Path, Path, Path]) -> None:
    """Shards hold one class (part) each: runs of 3 images, one request each, in a random order
    over all shards, so the buffer mixes classes from the first batch on."""
    ds = _lazy(tiny, shuffle_buffer=6, shuffle_chunk=3)
    handler = _faulty(ds, Faulty())
    ids = np.arange(60)
    order, _ = _epoch(ds, ids)
    assert sorted(order.tolist()) == ids.tolist()
    assert len(handler.ranges) == 6 * 3 + 3 * 2 and handler.streams == []  # shards of 7 images: 3 runs, of 6: 2
    first = ds.train.labels[order[:12]]
    assert len(set(first.tolist())) == 3  # all three classes in the first 12 images
    whole = _lazy(tiny, shuffle_buffer=6, shuffle_chunk=64)
    assert not torch.equal(_epoch(whole, ids)[0], order)


def test_the_order_does_not_depend_on_loader_workers(tiny: tuple[Path, Path, Path]) -> None:
    ids = np.arange(0, 60)
    one, x_one = _epoch(_lazy(tiny, shuffle_buffer=12), ids)
    two, x_two = _epoch(_lazy(tiny, shuffle_buffer=12, loader_workers=2), ids)
    assert torch.equal(one, two) and torch.equal(x_one, x_two)


def test_ranks_read_disjoint_equal_parts_of_the_shard_stream(tiny: tuple[Path, Path, Path]) -> None:
    ids = np.arange(2, 60)  # 58 ids: 14 a rank, 2 left out
    ds = _lazy(tiny, shuffle_buffer=6)
    handler = _faulty(ds, Faulty())
    parts = [_epoch(ds, ids, rank=r, world=4)[0].tolist() for r in range(4)]
    assert [len(p) for p in parts] == [14] * 4
    seen = [i for p in parts for i in p]
    assert len(set(seen)) == 56 and set(seen) <= set(ids.tolist())
    assert len(handler.streams) + len(handler.ranges) <= 9 + 3  # ~1/world of the shards each, a cut shard twice


def test_a_small_subset_keeps_range_reads(tiny: tuple[Path, Path, Path]) -> None:
    ds = _lazy(tiny)
    handler = _faulty(ds, Faulty())
    ids = np.array([0, 7, 14, 20, 27, 34, 40, 47, 54])  # one image in each shard of 6-7: under STREAM_FRACTION
    order, _ = _epoch(ds, ids)
    assert sorted(order.tolist()) == ids.tolist() and handler.streams == [] and len(handler.ranges) == 9


def test_shuffle_buffer_is_checked() -> None:
    with pytest.raises(ConfigError, match="data.shuffle_buffer must be >= 1, got 0"):
        DataConfig(shuffle_buffer=0).validate()


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "RETRY_PAUSES", (0.01, 0.02))


@pytest.mark.usefixtures("quick_retries")
def test_transient_read_errors_are_retried(tiny: tuple[Path, Path, Path]) -> None:
    ds = _lazy(tiny)
    pack = ds.train.pack
    expected, third = ([data for _, data in pack.stream(k)] for k in (1, 3))
    handler = _faulty(ds, Faulty(fail_opens=2))
    assert [data for _, data in pack.stream(1)] == expected and handler.streams == ["train-000001.tar"] * 3
    handler.fail_opens = 1
    assert pack.read(25) == third[5] and handler.ranges == ["train-000003.tar"] * 2
    handler = _faulty(ds, Faulty(cut_streams=2, cut_after=3000))  # reset twice mid-shard: resumed, no duplicates
    assert [data for _, data in pack.stream(1)] == expected and len(handler.streams) == 3


@pytest.mark.usefixtures("quick_retries")
def test_persistent_or_missing_shard_gives_one_line_naming_it(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    ds = _lazy(tiny)
    pack = ds.train.pack
    handler = _faulty(ds, Faulty(fail_opens=100))
    shard = pack.shard_url(1)
    with pytest.raises(DataError, match=rf"^cannot read {shard} \(3 tries\): injected: connection reset$"):
        list(pack.stream(1))
    with pytest.raises(DataError, match=rf"^cannot read {pack.shard_url(3)} \(sample 25\) \(3 tries\): injected"):
        pack.read(25)
    assert len(handler.streams) == 3 and len(handler.ranges) == 3
    copy = tmp_path / "pack"
    copy.mkdir()
    for f in tiny[1].iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    gone = load_datasets(_cfg(copy, tiny[2], max_decoded_gb=0.0, loader_workers=0))
    handler = _faulty(gone, Faulty())
    (copy / "train-000001.tar").unlink()  # lost after the job opened the pack: not retried
    with pytest.raises(DataError, match=f"^cannot read {copy / 'train-000001.tar'}: .*repack it"):
        list(gone.train.pack.stream(1))
    with pytest.raises(DataError, match=f"^cannot read {copy / 'train-000001.tar'} \\(sample 12\\): "):
        gone.train.pack.read(12)
    assert handler.streams == handler.ranges == ["train-000001.tar"]
