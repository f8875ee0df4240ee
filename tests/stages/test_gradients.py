"""The gradient stage on real Ray: sharded tables, exact row sets, resume, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch

from coreset import layout
from coreset.cluster.gradients import run_gradients
from coreset.data import load_datasets
from coreset.stages.gradients import ShardTask, compute_shard
from coreset.stages.train import load_source_model, train_source
from coreset.storage import StudyRoot
from studies import synthetic_study


def _cfg(*extra: str):
    return synthetic_study("grad", "data.synthetic_size=300", "train.epochs=3",
                           "gradients.norms=[l1, l2, linf]", "gradients.factor_epochs=[1, 2]",
                           "gradients.shard_size=64", "gradients.batch_size=50", "gradients.bound_batches=3",
                           "gradients.bound_batch_size=16", "gradients.final_epoch=last",
                           "gradients.cpus_per_worker=1", *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = StudyRoot(str(tmp_path_factory.mktemp("study")))
    train_source(_cfg(), root)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield root
    ray.shutdown()


@pytest.mark.ray
def test_table_has_one_row_per_sample_and_epoch(trained: StudyRoot) -> None:
    cfg = _cfg()
    summary = run_gradients(cfg, trained, dict(ray.cluster_resources()))
    assert summary.epochs == [1, 2, 3] and summary.final_epoch == 3 and summary.shards_skipped == 0
    df = pd.read_parquet(trained.url(layout.GRADIENTS))
    split = pd.read_parquet(trained.url(layout.SPLIT))
    train_ids = np.sort(split.sample_id[split.split == "train"].to_numpy())
    for epoch, rows in df.groupby("epoch"):
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
def test_lost_shard_is_recomputed_and_settings_change_is_refused(trained: StudyRoot) -> None:
    cfg = _cfg()
    run_gradients(cfg, trained, dict(ray.cluster_resources()))
    trained.delete(layout.gradient_shard(2, 1))
    again = run_gradients(cfg, trained, dict(ray.cluster_resources()))
    assert again.shards_computed == 1
    df = pd.read_parquet(trained.url(layout.GRADIENTS))
    assert not df.duplicated(["sample_id", "epoch"]).any() and df.groupby("epoch").size().nunique() == 1
    with pytest.raises(ValueError, match="computed with other settings .*shard_size"):
        run_gradients(_cfg("gradients.shard_size=32"), trained, dict(ray.cluster_resources()))
    with pytest.raises(ValueError, match="factor_epochs \\[7\\] exceed the 3 epochs"):
        run_gradients(_cfg("gradients.factor_epochs=[7]"), trained, dict(ray.cluster_resources()))


def test_gradients_need_a_trained_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no finished source training"):
        run_gradients(_cfg(), StudyRoot(str(tmp_path)), {"CPU": 2})


@pytest.mark.ray
def test_gradients_job_without_source_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "jobs" / "gradients.py"), "--config", str(repo / "jobs/configs/smoke.yaml"),
                           "--root", str(tmp_path), "--set", "data.name=synthetic"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: no finished source training in {tmp_path}; run jobs/train.py first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
