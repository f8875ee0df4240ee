"""The gradient stage: its resume plan and pieces in-process; sharded tables on real Ray."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from studies import copy_root, ray_copy, synthetic_study

from coreset import layout
from coreset.cluster.gradients import run_gradients
from coreset.data import load_datasets
from coreset.errors import StageError
from coreset.stages.gradients import ShardTask, compute_in_process, compute_shard, plan
from coreset.stages.train import load_source_model, train_source
from coreset.storage import StudyRoot


def _cfg(*extra: str):
    return synthetic_study("grad", "data.synthetic_size=300", "train.epochs=3",
                           "gradients.norms=[l1, l2, linf]", "gradients.factor_epochs=[1, 2]",
                           "gradients.shard_size=64", "gradients.batch_size=50", "gradients.bound_batches=3",
                           "gradients.bound_batch_size=16", "gradients.final_epoch=last",
                           "gradients.cpus_per_worker=1", *extra)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained source model (no gradient table): tests copy it before writing shards."""
    path = tmp_path_factory.mktemp("source")
    train_source(_cfg(), StudyRoot(str(path)))
    return path


@pytest.fixture
def fresh(source: Path, tmp_path: Path) -> StudyRoot:
    return copy_root(source, tmp_path / "study")


@pytest.fixture(scope="module")
def trained(source: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from ray_copy(source, tmp_path_factory.mktemp("ray") / "study")


def test_plan_lists_missing_shards_and_refuses_other_settings(fresh: StudyRoot) -> None:
    cfg = _cfg()
    work = plan(cfg, fresh)
    n_train = len(work.train_ids)
    assert work.final_epoch == 3 and {t.epoch for t in work.tasks} == {1, 2, 3}
    per_epoch = work.manifest["shards_per_epoch"]
    assert len(work.tasks) == 3 * per_epoch and work.todo == work.tasks and work.need_bound
    assert [t.final for t in work.tasks].count(True) == per_epoch
    assert len(work.manifest["shard_labels"]) == per_epoch and max(len(t.ids) for t in work.tasks) <= 64
    lost = next(len(t.ids) for t in work.tasks if (t.epoch, t.shard) == (2, 1))
    compute_in_process(cfg, fresh, work, load_datasets(cfg.data), torch.device("cpu"))
    assert plan(cfg, fresh).todo == []
    fresh.delete(layout.gradient_shard(2, 1))
    assert [(t.epoch, t.shard) for t in plan(cfg, fresh).todo] == [(2, 1)]
    with pytest.raises(StageError, match="computed with other settings .*shard_size"):
        plan(_cfg("gradients.shard_size=32"), fresh)
    with pytest.raises(StageError, match="factor_epochs \\[7\\] exceed the 3 epochs"):
        plan(_cfg("gradients.factor_epochs=[7]"), fresh)
    with pytest.raises(StageError, match="final_epoch=9 but source training ran 3 epochs"):
        plan(_cfg("gradients.final_epoch=9"), fresh)
    df = pd.read_parquet(fresh.url(layout.GRADIENTS))
    assert df.groupby("epoch").size().to_dict() == {1: n_train, 3: n_train, 2: n_train - lost}


@pytest.mark.ray
def test_table_has_one_row_per_sample_and_epoch(trained: StudyRoot) -> None:
    cfg = _cfg()
    summary = run_gradients(cfg, trained, dict(ray.cluster_resources()))
    assert summary.epochs == [1, 2, 3] and summary.final_epoch == 3 and summary.shards_skipped == 0
    df = pd.read_parquet(trained.url(layout.GRADIENTS))
    split = pd.read_parquet(trained.url(layout.SPLIT))
    train_ids = np.sort(split.sample_id[split.split == "train"].to_numpy())
    for _epoch, rows in df.groupby("epoch"):
        assert np.array_equal(np.sort(rows.sample_id.to_numpy()), train_ids)
    assert not df.duplicated(["sample_id", "epoch"]).any()
    final = df[df.epoch == 3]
    early = df[df.epoch < 3]
    assert final.l1_all.notna().all() and final.linf_weights.notna().all()
    assert early.l2_last.notna().all() and early.l2_all.isna().all()  # early checkpoints: forward-only columns
    assert len(df.err.iloc[0]) == 4 and len(df.emb.iloc[0]) == 128
    bound = pd.read_parquet(trained.url(layout.BATCH_BOUND))
    assert set(bound.column) == {"l2_last", "l2_weights", "l2_biases", "l2_all"} and len(bound) == 12
    assert (bound.norm_of_sum <= bound.sum_of_norms * (1 + 1e-6)).all()  # the triangle inequality

    # The same numbers as the engine called in-process (Ray adds distribution, not arithmetic).
    ds = load_datasets(cfg.data)
    model = load_source_model(cfg, trained, ds, 3, torch.device("cpu"))
    ids = train_ids[:64]
    local = compute_shard(model, ds, ShardTask(3, 0, ids, True), cfg.gradients, torch.device("cpu")).to_pandas()
    got = final.set_index("sample_id").loc[ids]
    assert np.allclose(got.l2_all.to_numpy(), local.l2_all.to_numpy(), rtol=1e-5)

    # A re-run finds every shard done and computes nothing.
    again = run_gradients(cfg, trained, dict(ray.cluster_resources()))
    assert again.shards_computed == 0 and again.shards_skipped == summary.shards_total


@pytest.mark.ray
def test_lost_shard_is_recomputed_on_the_cluster(trained: StudyRoot) -> None:
    cfg = _cfg()
    run_gradients(cfg, trained, dict(ray.cluster_resources()))
    trained.delete(layout.gradient_shard(2, 1))
    again = run_gradients(cfg, trained, dict(ray.cluster_resources()))
    assert again.shards_computed == 1
    df = pd.read_parquet(trained.url(layout.GRADIENTS))
    assert not df.duplicated(["sample_id", "epoch"]).any() and df.groupby("epoch").size().nunique() == 1


def test_gradients_need_a_trained_source(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="no finished source training"):
        run_gradients(_cfg(), StudyRoot(str(tmp_path)), {"CPU": 2})


@pytest.mark.ray
def test_gradients_job_without_source_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(repo / "jobs" / "gradients.py"),
                           "--config", str(repo / "jobs/configs/smoke.yaml"),
                           "--root", str(tmp_path), "--set", "data.name=synthetic"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: no finished source training in {tmp_path}; run jobs/train.py first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_job_refusing_new_settings_leaves_the_recorded_config(fresh: StudyRoot, tmp_path: Path) -> None:
    """A stage's own check runs before ``config.yaml`` is written: a refused job changes nothing."""
    import subprocess
    import sys

    import yaml

    from coreset.cli import record_config

    cfg = _cfg()
    compute_in_process(cfg, fresh, plan(cfg, fresh), load_datasets(cfg.data), torch.device("cpu"))
    record_config(cfg, fresh)
    before = {p.relative_to(fresh.uri): p.read_bytes() for p in Path(fresh.uri).rglob("*") if p.is_file()}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(repo / "jobs" / "gradients.py"), "--config", str(config),
                           "--root", fresh.uri, "--set", "gradients.shard_size=32"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 2, proc.stderr
    assert (proc.stderr.strip().splitlines()[-1].startswith("error: ")
            and "computed with other settings (" in proc.stderr)
    after = {p.relative_to(fresh.uri): p.read_bytes() for p in Path(fresh.uri).rglob("*") if p.is_file()}
    assert after == before


def test_class_shards_hold_whole_classes() -> None:
    from coreset.stages.gradients import class_shards

    sizes = [3, 5, 2, 9, 1]
    labels = np.repeat(np.arange(5), sizes)
    ids = np.random.default_rng(0).permutation(len(labels)) * 3  # ids need not follow labels
    shards = class_shards(ids, labels, 6)
    label_of = dict(zip(ids, labels, strict=True))
    assert [sorted({label_of[i] for i in s}) for s in shards] == [[0], [1], [2], [3], [3], [4]]
    assert [len(s) for s in shards] == [3, 5, 2, 5, 4, 1]
    for seed in range(5):  # any labels: every id once, shards within size, a class never spans units
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 40, size=500)
        ids = rng.permutation(500)
        shards = class_shards(ids, labels, 32)
        labels = labels[np.argsort(ids)]  # indexed by sample id
        flat = np.concatenate(shards)
        assert np.array_equal(np.sort(flat), np.arange(500)) and max(len(s) for s in shards) <= 32
        owner: dict[int, list[int]] = {}
        for k, s in enumerate(shards):
            assert np.array_equal(s, np.sort(s))
            for c in np.unique(labels[s]):
                owner.setdefault(int(c), []).append(k)
        for c, ks in owner.items():
            assert ks == list(range(ks[0], ks[-1] + 1))
            if len(ks) > 1:  # a class too large for one shard has shards of its own
                assert all(set(labels[shards[k]]) == {c} for k in ks)
