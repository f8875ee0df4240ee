"""Packed datasets (issue 16): WebDataset shards of real Tiny-ImageNet JPEGs, read back as
``data.root`` with the folder's split, sample ids, pixels and gradient table; the pack job
on Ray into the local S3 server; missing, truncated and foreign packs refused in one line."""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import runpy
import subprocess
import sys
import tarfile
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from folders import images, tiny_folder, truncate

from coreset import layout
from coreset.cli import record_config
from coreset.config import DataConfig, GradientsConfig, StudyConfig
from coreset.data import DataError, Datasets, load_datasets
from coreset.data.decode import decode_image
from coreset.data.formats import load_splits
from coreset.data.gather import SubsetBatches
from coreset.data.pack import PackSettings, finish_pack, pack_source, plan_pack, start_pack, write_shard
from coreset.data.packed import PackedSplit
from coreset.methods.base import score_frame
from coreset.models import build_model
from coreset.stages.export import check_subset, subset_pack, write_subset_csv
from coreset.stages.gradients import ShardTask, compute_shard
from coreset.stages.retrain import Trial, recorded_subset, retrain
from coreset.stages.score import MethodWork, build_method, method_settings, write_method
from coreset.stages.train import check_study_data, load_split, record_missing_data_source
from coreset.storage import StudyRoot

SHARD_MB = 0.03  # ~15 Tiny-ImageNet JPEGs a shard: several shards per split
SMALL_SHARDS = PackSettings(shard_mb=SHARD_MB)


def _cfg(folder: Path, cache: Path, **kw: object) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(folder), image_size=64, cache_dir=str(cache), **kw)


def pack_here(cfg: DataConfig, out: Path, settings: PackSettings = SMALL_SHARDS) -> list[str]:
    """The pack job's steps in this process (jobs/pack.py runs write_shard as Ray tasks);
    returns the shards it wrote."""
    train, test = (pack_source(ds) for ds in load_splits(cfg))
    plan = plan_pack(cfg.name, train, test, settings)
    root = StudyRoot(str(out))
    todo = start_pack(root, plan)
    for work in todo:
        write_shard(root, {"train": train, "test": test}[work.split], work, settings)
    finish_pack(root, plan)
    return [w.name for w in todo]


@pytest.fixture(scope="module")
def tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(folder, its pack, the cache): 3 classes x 20 train + 5 val real JPEGs."""
    base = tmp_path_factory.mktemp("tiny")
    folder = tiny_folder(shared_data, base / "folder", classes=3, train=20, val=5)
    pack_here(_cfg(folder, base / "cache"), base / "pack")
    return folder, base / "pack", base / "cache"


def test_pack_is_webdataset_tar_in_sample_order_with_index_and_manifest(tiny: tuple[Path, Path, Path]) -> None:
    folder, pack, _ = tiny
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["encoding"] == {"kind": "original"} and manifest["splits"]["train"]["count"] == 60
    assert len(manifest["splits"]["train"]["shards"]) >= 3 and manifest["splits"]["train"]["cut"] == "class"
    files = images(folder)
    index = pd.read_parquet(pack / "train-index.parquet")
    assert list(index.columns) == ["sample_id", "label", "path", "shard", "offset", "size"]
    assert index.path.tolist() == [str(f.relative_to(folder / "train")) for f in files]
    for shard in manifest["splits"]["train"]["shards"]:  # contiguous id ranges, two members per image
        with tarfile.open(pack / shard["name"]) as tar:
            ids = range(shard["first"], shard["first"] + shard["count"])
            assert tar.getnames() == [f"{i:08d}.{ext}" for i in ids for ext in ("jpg", "cls")]
            assert [int(tar.extractfile(f"{i:08d}.cls").read()) for i in ids] == index.label[list(ids)].tolist()
    raw = {n: (pack / n).read_bytes() for n in {s["name"] for s in manifest["splits"]["train"]["shards"]}}
    for row in index.itertuples():  # the index's offsets hold the original bytes
        name = manifest["splits"]["train"]["shards"][row.shard]["name"]
        assert raw[name][row.offset: row.offset + row.size] == files[row.sample_id].read_bytes()


def test_rerun_writes_only_missing_shards_and_refuses_other_settings(tiny: tuple[Path, Path, Path],
                                                                     tmp_path: Path) -> None:
    folder, pack, cache = tiny
    copy = tmp_path / "pack"
    subprocess.run(["cp", "-r", str(pack), str(copy)], check=True)
    before = {p.name: p.read_bytes() for p in copy.glob("*.tar")}
    assert pack_here(_cfg(folder, cache), copy) == []
    (copy / "train-000001.tar").unlink()  # a lost shard
    (copy / "_index" / "test-000000.parquet").unlink()  # a shard whose index part never got written
    assert pack_here(_cfg(folder, cache), copy) == ["train-000001.tar", "test-000000.tar"]
    assert {p.name: p.read_bytes() for p in copy.glob("*.tar")} == before  # byte-identical shards
    with pytest.raises(DataError, match="holds another pack .*encoding"):
        pack_here(_cfg(folder, cache), copy, PackSettings(shard_mb=SHARD_MB, short_side=32))


def _equal_sets(a: Datasets, b: Datasets) -> None:
    for split in ("train", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert x.classes == y.classes and x.paths == y.paths and torch.equal(x.labels, y.labels)


def test_pack_gives_the_folders_split_ids_pixels_and_gradients(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    folder, pack, cache = tiny
    from_folder = load_datasets(_cfg(folder, cache))
    from_pack = load_datasets(_cfg(pack, cache))
    _equal_sets(from_folder, from_pack)
    assert torch.equal(from_folder.train.images, from_pack.train.images)
    assert torch.equal(from_folder.test.images, from_pack.test.images)
    study = StudyConfig(name="t", data=from_folder.config)
    assert load_split(study, StudyRoot(str(tmp_path / "r1")), from_folder).equals(
        load_split(study, StudyRoot(str(tmp_path / "r2")), from_pack))
    torch.manual_seed(0)
    model = build_model("cnn5", from_folder.spec).eval()
    task = ShardTask(epoch=1, shard=0, ids=np.arange(0, 60, 2), final=True)
    grads = GradientsConfig(norms=("l1", "l2"), groups=("last", "all"), batch_size=8, factor_dtype="float32")
    streaming = load_datasets(_cfg(pack, cache, max_decoded_gb=0.0, loader_workers=0))  # read shard by shard
    table = {name: compute_shard(model, ds, task, grads, torch.device("cpu")).to_pandas()
             for name, ds in (("folder", from_folder), ("pack", from_pack), ("streaming", streaming))}
    pd.testing.assert_frame_equal(table["folder"], table["pack"])
    pd.testing.assert_frame_equal(table["folder"], table["streaming"])


def test_large_pack_streams_shards_like_the_folder_streams_files(tiny: tuple[Path, Path, Path]) -> None:
    folder, pack, cache = tiny
    lazy = {"max_decoded_gb": 0.0, "loader_workers": 1}
    from_folder, from_pack = load_datasets(_cfg(folder, cache, **lazy)), load_datasets(_cfg(pack, cache, **lazy))
    assert from_pack.train.pack is not None and not from_pack.train.in_memory
    _equal_sets(from_folder, from_pack)
    for ids, kw in ((None, {}), (np.arange(0, 60, 7), {}),  # whole shards streamed; a few range reads
                    (np.arange(0, 60, 7), {"train": True, "shuffle": True, "seed": 3})):  # a shuffled subset: ranges
        a, b = (list(ds.batches("train", ids, 8, **kw)) for ds in (from_folder, from_pack))
        assert len(a) == len(b)
        for (xa, ya, ia), (xb, yb, ib) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    folder_x = torch.cat([x for x, _, _ in from_folder.batches("train", None, 8)])
    shuffled = list(from_pack.batches("train", None, 8, shuffle=True, seed=3))  # shards through the shuffle buffer
    ids, x = torch.cat([i for _, _, i in shuffled]), torch.cat([x for x, _, _ in shuffled])
    assert torch.equal(ids.sort().values, torch.arange(60)) and torch.equal(x[ids.argsort()], folder_x)


def test_missing_or_truncated_shard_stops_naming_it(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, pack, cache = tiny
    copy = tmp_path / "pack"
    subprocess.run(["cp", "-r", str(pack), str(copy)], check=True)
    shard = copy / "train-000002.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"pack shard {shard} is truncated or altered"):
        load_datasets(_cfg(copy, cache))
    shard.unlink()
    with pytest.raises(DataError, match=f"pack shard {shard} is missing; rerun jobs/pack.py"):
        load_datasets(_cfg(copy, cache))
    (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match="is unfinished"):
        load_datasets(_cfg(copy, cache))


def test_a_pack_of_other_data_is_refused_by_the_study_root(shared_data: Path, tiny: tuple[Path, Path, Path],
                                                           tmp_path: Path) -> None:
    folder, _, cache = tiny
    study = StudyConfig(name="t", data=_cfg(folder, cache))
    root = StudyRoot(str(tmp_path / "root"))
    load_split(study, root, load_datasets(study.data))  # the study recorded the folder's split
    other = tiny_folder(shared_data, tmp_path / "other", classes=3, train=19, val=5)
    pack_here(_cfg(other, cache), tmp_path / "other-pack")
    with pytest.raises(DataError, match="does not match the imagefolder train set"):
        check_study_data(study, root, load_datasets(_cfg(tmp_path / "other-pack", cache)))
    with pytest.raises(DataError, match="is a pack of imagefolder, not cifar10"):
        load_datasets(dataclasses.replace(_cfg(tmp_path / "other-pack", cache), name="cifar10"))


def test_unreadable_images_follow_data_corrupt(shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_folder(shared_data, tmp_path / "folder", classes=2, train=6, val=2)
    bad = images(folder)[3]
    truncate(bad)
    with pytest.raises(DataError, match=f"cannot decode {bad}: Image is incomplete or truncated"):
        pack_here(_cfg(folder, tmp_path / "cache"), tmp_path / "pack")
    pack_here(_cfg(folder, tmp_path / "cache", corrupt="skip"), tmp_path / "pack-skip")
    skip = _cfg(folder, tmp_path / "cache", corrupt="skip")
    from_folder = load_datasets(skip)
    from_pack = load_datasets(dataclasses.replace(skip, root=str(tmp_path / "pack-skip")))
    assert len(from_pack.train) == 11 and from_pack.train.skipped == from_folder.train.skipped
    assert from_pack.train.paths == from_folder.train.paths
    assert torch.equal(from_folder.train.images, from_pack.train.images)


def test_pack_job_on_ray_into_s3_and_read_back(tiny: tuple[Path, Path, Path], s3_bucket: str, tmp_path: Path) -> None:
    folder, _, cache = tiny
    config = tmp_path / "c.yaml"
    config.write_text(f"name: t\ndata: {{name: imagefolder, root: {folder}, image_size: 64, cache_dir: {cache}}}\n")
    out = f"s3://{s3_bucket}/tiny-pack"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "jobs/pack.py", "--config", str(config), "--out", out,
                          "--shard-mb", str(SHARD_MB)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "pack: finished" in run.stderr and "Traceback" not in run.stderr
    from_folder = load_datasets(_cfg(folder, cache))
    from_s3 = load_datasets(_cfg(out, cache))  # type: ignore[arg-type]
    _equal_sets(from_folder, from_s3)
    assert torch.equal(from_folder.train.images, from_s3.train.images)
    lazy = load_datasets(dataclasses.replace(_cfg(folder, cache), root=out, max_decoded_gb=0.0, loader_workers=0))
    x, _, ids = next(iter(lazy.batches("train", np.arange(5, 60, 9), 8)))  # range reads from S3
    assert torch.equal(x, from_folder.transform()(from_folder.train.images[ids], False, torch.Generator()))
    again = subprocess.run([sys.executable, "jobs/pack.py", "--config", str(config), "--out", out,
                            "--shard-mb", str(SHARD_MB)], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "pack: 0 of" in again.stderr, again.stderr[-2000:]


def test_pack_options_are_checked_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    from coreset.cli import parser
    from coreset.cluster.pack import _pack_args

    p = parser("pack")
    _pack_args(p)
    for bad, why in ((["--quality", "0"], "--quality: must lie in 1..100"), (["--shard-mb", "0"], "must be > 0"),
                     (["--short-side", "-1"], "must be >= 0")):
        with pytest.raises(SystemExit) as e:
            p.parse_args(["--config", "c.yaml", "--out", "o", *bad])
        assert e.value.code == 2 and why in capsys.readouterr().err


def test_reencoded_pack_records_its_encoding_and_smaller_images(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    folder, _, cache = tiny
    pack_here(_cfg(folder, cache), tmp_path / "pack", PackSettings(shard_mb=SHARD_MB, short_side=32, quality=80))
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    assert manifest["encoding"] == {"kind": "jpeg", "short_side": 32, "quality": 80}
    with tarfile.open(tmp_path / "pack" / "train-000000.tar") as tar:
        assert decode_image(tar.extractfile("00000000.jpg").read(), 3).shape == (3, 32, 32)  # type: ignore[union-attr]
    small = load_datasets(dataclasses.replace(_cfg(tmp_path / "pack", cache), image_size=32))
    assert small.train.images.shape == (60, 3, 32, 32)


@pytest.fixture
def pack_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``<uri>:<split>`` of every read of a pack's shards (whole-shard streams, span and range reads)."""
    reads: list[str] = []
    stream, ranges, span = PackedSplit.stream, PackedSplit._ranges, PackedSplit._read_span

    def counted_stream(self: PackedSplit, shard: int):
        reads.append(self.uri)
        return stream(self, shard)

    def counted_ranges(self: PackedSplit, ids: np.ndarray) -> list[bytes]:
        reads.append(f"{self.uri}:{self.split}")
        return ranges(self, ids)

    def counted_span(self: PackedSplit, shard: int, start: int, stop: int) -> bytes:
        reads.append(f"{self.uri}:{self.split}")
        return span(self, shard, start, stop)

    monkeypatch.setattr(PackedSplit, "stream", counted_stream)
    monkeypatch.setattr(PackedSplit, "_read_span", counted_span)
    monkeypatch.setattr(PackedSplit, "_ranges", counted_ranges)
    return reads


def test_a_decoded_pack_is_decoded_once_per_machine_for_every_copy(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                                   pack_reads: list[str]) -> None:
    folder, pack, _ = tiny
    cache = tmp_path / "cache"
    first = load_datasets(_cfg(pack, cache))
    assert len(pack_reads) == len(json.loads((pack / "manifest.json").read_text())["splits"]["train"]["shards"]) \
        + len(json.loads((pack / "manifest.json").read_text())["splits"]["test"]["shards"])
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(pack), str(copy)], check=True)
    pack_reads.clear()
    again = load_datasets(_cfg(copy, cache))  # another copy of the same pack: the same cache entry
    assert pack_reads == []
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.test.images, again.test.images)
    assert torch.equal(again.train.images, load_datasets(_cfg(folder, cache)).train.images)
    load_datasets(dataclasses.replace(_cfg(copy, cache), image_size=32))  # another size: decoded again
    assert pack_reads


def _streaming(root: Path, cache: Path, max_decoded_gb: float = 0.0) -> Datasets:
    return load_datasets(_cfg(root, cache, max_decoded_gb=max_decoded_gb, loader_workers=0))


def _entries(cache: Path) -> list[Path]:
    """The gathered subsets in the cache (a decoded one has its unreadable list beside it)."""
    return [p for p in (cache / "subsets").iterdir() if p.suffix in (".npy", ".tar")]


@pytest.mark.parametrize("max_decoded_gb", [0.0, 5e-4], ids=["bytes", "decoded"])
def test_a_subset_of_a_streaming_pack_is_gathered_once_into_the_cache(
        tiny: tuple[Path, Path, Path], tmp_path: Path, pack_reads: list[str], max_decoded_gb: float) -> None:
    """5e-4 GB: the whole pack (0.9 MB decoded) streams, a 9-image subset (0.1 MB) is held decoded."""
    folder, pack, _ = tiny
    cache = tmp_path / "cache"
    ids = np.arange(1, 60, 7)
    folder_set, packed = load_datasets(_cfg(folder, cache)), _streaming(pack, cache, max_decoded_gb)
    assert packed.train.pack is not None and pack_reads == []
    uri = packed.train.pack.uri

    def from_pack() -> list[str]:  # (a gathered tar is read through PackedSplit too)
        return [u for u in pack_reads if u.startswith(f"{uri}:")]

    epochs = []
    for trial in range(2):  # two trials of the subset (another seed: the same images)
        batches = packed.subset_batches(ids, 4, train=True, shuffle=True, seed=5)
        assert isinstance(batches, SubsetBatches) and batches.dataset.in_memory == (max_decoded_gb > 0)
        epochs.append([])
        for epoch in (1, 2):
            batches.set_epoch(epoch)
            epochs[-1] += list(batches)
        if trial == 0:
            assert from_pack(), "the first trial read nothing from the pack"
            pack_reads.clear()
    assert from_pack() == [] and len(_entries(cache)) == 1  # the second read only the cache
    expected = folder_set.batches("train", ids, 4, train=True, shuffle=True, seed=5)
    want = []
    for epoch in (1, 2):
        expected.set_epoch(epoch)
        want += list(expected)
    for got in epochs:  # the folder's pixels, labels and ids, in the same shuffled batches
        assert len(got) == len(want)
        for (xa, ya, ia), (xb, yb, ib) in zip(got, want, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    ordered = next(iter(packed.subset_batches(ids, len(ids))))
    assert torch.equal(ordered[0], folder_set.transform()(folder_set.train.images[ids], False, torch.Generator()))
    packed.subset_batches(ids[1:], 4)  # other ids: another entry
    assert from_pack() and len(_entries(cache)) == 2


def test_a_gathered_subset_is_held_on_the_trials_device_when_it_fits(tiny: tuple[Path, Path, Path],
                                                                     tmp_path: Path) -> None:
    """Retraining's resident path for a streaming pack: the decoded gathered subset goes to the
    device (``meta`` stands in for a GPU) within the budget; over it, or held as bytes, it stays."""
    _, pack, _ = tiny
    ids, meta = np.arange(1, 60, 7), torch.device("meta")
    decoded = _streaming(pack, tmp_path / "cache", 5e-4)
    held = decoded.subset_batches(ids, 4, device=meta, max_bytes=1 << 20)
    assert held.dataset.images.device == meta and held.dataset.labels.device == meta
    assert next(iter(held))[0].device == meta
    assert decoded.subset_batches(ids, 4, device=meta, max_bytes=100).dataset.images.device.type == "cpu"
    as_bytes = _streaming(pack, tmp_path / "cache-bytes", 0.0).subset_batches(ids, 4, device=meta, max_bytes=1 << 20)
    assert isinstance(as_bytes, SubsetBatches) and not as_bytes.dataset.in_memory


def test_a_large_subset_or_a_folder_is_not_gathered(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    folder, pack, _ = tiny
    assert not isinstance(_streaming(pack, tmp_path).subset_batches(np.arange(40), 4), SubsetBatches)
    assert not isinstance(_streaming(folder, tmp_path).subset_batches(np.arange(4), 4), SubsetBatches)
    assert not (tmp_path / "subsets").exists()


def _started(root: Path, data: DataConfig) -> tuple[StudyConfig, StudyRoot]:
    """A study root whose source training recorded the split and the data source of ``data``."""
    study, study_root = StudyConfig(name="t", data=data), StudyRoot(str(root))
    load_split(study, study_root, load_datasets(data))
    return study, study_root


def test_a_study_moves_to_a_pack_of_its_original_bytes_and_refuses_other_data(
        shared_data: Path, tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    folder, pack, cache = tiny
    study, root = _started(tmp_path / "root", _cfg(folder, cache))
    recorded = json.loads((tmp_path / "root" / layout.DATA_SOURCE).read_text())
    assert recorded["kind"] == "folder" and recorded["encoding"] == {"kind": "original"}
    assert recorded["counts"] == {"train": 60, "test": 15}
    for data in (_cfg(pack, cache), _cfg(pack, cache, max_decoded_gb=0.0)):  # the migration: same answers
        check_study_data(dataclasses.replace(study, data=data), root, load_datasets(data))
    pack_here(_cfg(folder, cache), tmp_path / "q90", PackSettings(shard_mb=SHARD_MB, short_side=48, quality=90))
    with pytest.raises(DataError, match=f"^data.root is a pack of imagefolder re-encoded at short side 48 q90 at "
                                        f"{tmp_path / 'q90'}, but this study was started from the original images "
                                        f"of imagefolder in {folder} .*; use the data it was started with or a new "
                                        f"--root$"):
        check_study_data(study, root, load_datasets(_cfg(tmp_path / "q90", cache)))
    other = tiny_folder(shared_data, tmp_path / "other", classes=3, train=20, val=5)
    study_of_other, root_of_other = _started(tmp_path / "root2", _cfg(other, cache))
    first, second = images(other)[:2]  # same class: the same labels, other images under ids 0 and 1
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b), second.write_bytes(a)
    pack_here(_cfg(other, cache), tmp_path / "swapped")
    with pytest.raises(DataError, match=f"data.root is a pack of the original images of imagefolder at "
                                        f"{tmp_path / 'swapped'}, but this study was started from the original"):
        check_study_data(study, root, load_datasets(_cfg(tmp_path / "swapped", cache)))
    with pytest.raises(DataError, match=f"in {other}, but this study was started from the original images of "
                                        f"imagefolder in {other} .whose images have changed"):  # the folder, changed
        check_study_data(study_of_other, root_of_other, load_datasets(_cfg(other, cache)))


def test_a_root_started_before_the_record_records_its_data_at_the_next_job(tiny: tuple[Path, Path, Path],
                                                                            tmp_path: Path) -> None:
    folder, pack, cache = tiny
    study, root = _started(tmp_path / "root", _cfg(pack, cache))
    (tmp_path / "root" / layout.DATA_SOURCE).unlink()  # a root of an older version
    q = tmp_path / "q"
    pack_here(_cfg(folder, cache), q, PackSettings(shard_mb=SHARD_MB, short_side=48))
    check_study_data(study, root, load_datasets(_cfg(q, cache)))  # nothing recorded: only the labels are checked
    record_missing_data_source(root, load_datasets(study.data))  # what every job does once it holds the lease
    assert json.loads((tmp_path / "root" / layout.DATA_SOURCE).read_text())["kind"] == "pack"
    with pytest.raises(DataError, match="re-encoded at short side 48 q90"):
        check_study_data(study, root, load_datasets(_cfg(q, cache)))
    check_study_data(study, root, load_datasets(_cfg(folder, cache)))  # the pack's folder: the same bytes


def _scored(root_dir: Path, data: DataConfig) -> tuple[StudyConfig, StudyRoot]:
    """A study root as the stages leave it for the export: config, split, data source, and the
    score stage's recorded subsets of ``random`` at fraction 0.2, seeds 3 and 4."""
    cfg = StudyConfig(name="t", data=data)
    cfg = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, methods=("random",), fractions=(0.2,),
                                                             seeds=(3, 4)))
    root = StudyRoot(str(root_dir))
    record_config(cfg, root)
    split = load_split(cfg, root, load_datasets(data))
    method = build_method(cfg, "random", 1)
    work = MethodWork("random", method, method_settings(cfg, method), False)
    write_method(cfg, root, work, score_frame(split[split.split == "train"], np.zeros(int((split.split == "train")
                                                                                         .sum()))), {})
    return cfg, root


def _pack_job(*argv: str) -> subprocess.CompletedProcess:
    """``python jobs/pack.py ARGV`` in this process (runpy); starting Ray fails the test."""
    import coreset.cluster.pack as pack_module

    script, err = str(REPO / "jobs" / "pack.py"), io.StringIO()
    code: int | str | None = 0

    def no_ray(*args: object, **kwargs: object) -> dict[str, float]:
        raise AssertionError("the job started Ray")

    with pytest.MonkeyPatch.context() as patch, redirect_stderr(err):
        patch.setattr(sys, "argv", [script, *argv])
        patch.setattr(pack_module, "init_ray", no_ray)
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as stop:
            code = stop.code
    return subprocess.CompletedProcess(argv, code if isinstance(code, int) else 1, "", err.getvalue())


def _export_here(cfg: StudyConfig, root: StudyRoot, out: Path, seed: int = 3) -> np.ndarray:
    """The export's steps in this process (the job runs write_shard as Ray tasks); the subset's ids."""
    trial, settings = check_subset(cfg, root, "random", 0.2, seed)
    datasets = load_datasets(dataclasses.replace(cfg.data, max_decoded_gb=0.0))
    plan, sources, ids = subset_pack(cfg, root, datasets, trial, settings, PackSettings(SHARD_MB))
    target = StudyRoot(str(out))
    for work in start_pack(target, plan):
        write_shard(target, sources[work.split], work, PackSettings(SHARD_MB))
    write_subset_csv(target, finish_pack(target, plan), ids)
    return ids


def test_a_coreset_leaves_the_study_as_a_pack_of_its_original_bytes(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder, pack, cache = tiny
    caplog.set_level(logging.INFO, logger="coreset")
    cfg, root = _scored(tmp_path / "study", _cfg(folder, cache))
    out = tmp_path / "coreset"
    ids = _export_here(cfg, root, out)
    assert np.array_equal(ids, recorded_subset(root, Trial("random", 0.2, 3, cfg.model.name))) and len(ids) == 11
    job = _pack_job("--root", str(tmp_path / "study"), "--subset", "random", "0.2", "3", "--out", str(out),
                    "--shard-mb", str(SHARD_MB))  # the job's plan is the same: nothing left to write, no Ray
    assert job.returncode == 0 and "pack: 0 of" in caplog.text, job.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    about = manifest["subset"]
    assert (about["method"], about["fraction"], about["seed"], about["images"]) == ("random", 0.2, 3, 11)
    assert about["settings"]["seeds"] == [3, 4] and about["data"]["kind"] == "folder"
    table = pd.read_csv(out / "subset.csv")
    assert list(table.columns) == ["shard", "key", "offset", "size", "sample_id", "label", "class", "path"]
    files, labels = images(folder), load_datasets(cfg.data).train.labels.numpy()
    assert table.sample_id.tolist() == ids.tolist() and table.label.tolist() == labels[ids].tolist()
    assert table["class"].tolist() == [files[i].parent.name for i in ids]
    for row in table.itertuples():  # each member holds the original file's bytes
        assert row.path == str(files[row.sample_id].relative_to(folder / "train"))
        with open(out / row.shard, "rb") as f:
            f.seek(row.offset)
            assert f.read(row.size) == files[row.sample_id].read_bytes()
    as_root = load_datasets(_cfg(out, cache))  # a pack like any other: the coreset and the study's test split
    whole = load_datasets(_cfg(folder, cache))
    assert torch.equal(as_root.train.images, whole.train.images[ids])
    assert torch.equal(as_root.test.images, whole.test.images)
    from_pack_cfg, from_pack_root = _scored(tmp_path / "study-of-pack", _cfg(pack, cache, max_decoded_gb=0.0))
    assert np.array_equal(_export_here(from_pack_cfg, from_pack_root, tmp_path / "coreset2"), ids)
    for shard in manifest["splits"]["train"]["shards"]:  # the pack's ranges give the folder's bytes
        assert (tmp_path / "coreset2" / shard["name"]).read_bytes() == (out / shard["name"]).read_bytes()


def test_a_coreset_export_refuses_bad_input_in_one_line(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    folder, _, cache = tiny
    _scored(tmp_path / "study", _cfg(folder, cache))
    unscored = StudyRoot(str(tmp_path / "unscored"))
    record_config(StudyConfig(name="t", data=_cfg(folder, cache)), unscored)
    study, out = str(tmp_path / "study"), str(tmp_path / "out")
    config = tmp_path / "c.yaml"
    config.write_text(f"name: t\ndata: {{name: imagefolder, root: {folder}}}\n")
    cases = {
        ("--root", study, "--subset", "gradsimcore", "0.2", "3"): "scored random, not gradsimcore$",
        ("--root", study, "--subset", "random", "0.1", "3"): "fractions 0.2 and seeds 3, 4, not fraction 0.1 seed 3$",
        ("--root", study, "--subset", "random", "0.2", "9"): "not fraction 0.2 seed 9$",
        ("--root", study, "--subset", "random", "x", "3"): "FRACTION must be a number and SEED an integer$",
        ("--root", str(tmp_path / "unscored"), "--subset", "random", "0.2", "3"): "holds no scores .*run jobs/score.py",
        ("--root", str(tmp_path / "none"), "--subset", "random", "0.2", "3"): "holds no study .config.yaml not found",
        ("--subset", "random", "0.2", "3"): "^--subset needs --root STUDY",
        ("--root", study): "^--root needs --subset METHOD FRACTION SEED",
        ("--root", study, "--config", str(config), "--subset", "random", "0.2", "3"): "drop --config",
    }
    for argv, why in cases.items():
        job = _pack_job(*argv, "--out", out)
        lines = [line for line in job.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        assert job.returncode == 2 and len(errors) == 1 and "Traceback" not in job.stderr, (argv, job.stderr)
        assert re.search(why, errors[0].removeprefix("error: ")), (argv, errors[0])
    assert not Path(out).exists()


def test_a_study_of_decoded_images_moves_to_their_lossless_pack(shared_data: Path, tmp_path: Path) -> None:
    """MNIST's IDX files come decoded; their pack stores PNGs and carries the pixels' fingerprint."""
    from test_idx import FILES, idx_folder

    from coreset.data.idx import read_idx

    rows = {name: read_idx(shared_data / "mnist" / f"{name}.gz")[:n] for name, n in zip(FILES, (200, 200, 50, 50),
                                                                                        strict=True)}
    mnist = DataConfig(name="mnist", root=str(idx_folder(tmp_path / "idx", rows)), cache_dir=str(tmp_path / "cache"))
    study, root = _started(tmp_path / "root", mnist)
    assert json.loads((tmp_path / "root" / layout.DATA_SOURCE).read_text())["kind"] == "arrays"
    for name, settings in (("png", PackSettings()), ("q90", PackSettings(short_side=20))):
        pack_here(mnist, tmp_path / name, settings)
    packed = dataclasses.replace(mnist, root=str(tmp_path / "png"))
    check_study_data(dataclasses.replace(study, data=packed), root, load_datasets(packed))
    with pytest.raises(DataError, match="re-encoded at short side 20 q90 .*started from the decoded images of mnist"):
        check_study_data(study, root, load_datasets(dataclasses.replace(mnist, root=str(tmp_path / "q90"))))


def test_retraining_trials_of_one_subset_read_a_streaming_pack_once(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                                      pack_reads: list[str]) -> None:
    _, pack, _ = tiny
    cfg = StudyConfig(name="t", data=_cfg(pack, tmp_path / "cache", max_decoded_gb=0.0, loader_workers=0))
    cfg = dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, policy="steps", steps=4, evaluations=1,
                                                               batch_size=4))
    datasets = load_datasets(cfg.data)
    train_reads = []
    for seed in (0, 1):  # two trials of one subset (the seeds of the grid), as on one node
        pack_reads.clear()
        row = retrain(cfg, datasets, Trial("random", 0.2, seed, "cnn5"), np.arange(3, 60, 5))
        assert row["steps"] == 4
        train_reads.append(pack_reads.count(f"{datasets.train.pack.uri}:train"))  # (not the gathered tar's)
    assert train_reads[0] > 0 and train_reads[1] == 0


def test_a_subset_is_gathered_from_an_s3_pack_by_a_pool_of_readers(tiny: tuple[Path, Path, Path], s3_bucket: str,
                                                                    tmp_path: Path) -> None:
    """The gather's threads share the process's S3 client (pyarrow's): the local S3 server's copy
    of the pack gives the folder's pixels, decoded (fits) and as bytes (does not)."""
    folder, pack, _ = tiny
    uri = f"s3://{s3_bucket}/tiny-pack"
    remote = StudyRoot(uri)
    for f in pack.iterdir():
        if f.is_file():
            remote.write_bytes(f.name, f.read_bytes())
    whole = load_datasets(_cfg(folder, tmp_path / "cache"))
    ids = np.arange(0, 60, 4)
    want = whole.transform()(whole.train.images[ids], False, torch.Generator())
    for max_decoded_gb in (5e-4, 0.0):
        streamed = load_datasets(dataclasses.replace(_cfg(folder, tmp_path / "cache"), root=uri,
                                                     max_decoded_gb=max_decoded_gb, loader_workers=0))
        batches = streamed.subset_batches(ids, len(ids))
        assert isinstance(batches, SubsetBatches) and batches.dataset.in_memory == (max_decoded_gb > 0)
        x, y, sid = next(iter(batches))
        assert torch.equal(x, want) and torch.equal(sid, torch.from_numpy(ids))
        assert torch.equal(y, whole.train.labels[ids])
