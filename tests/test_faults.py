"""Faults of a spot GPU fleet, injected into real Ray: killed actors, a killed study, a lost
node, an interrupted Tune run. Each test bounds its time and cleans up what it started."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import yaml
from faults import kill_one, kill_session, parquet_files, tune_trial_failures, wait_for, worker_processes_of
from ray.cluster_utils import Cluster
from studies import synthetic_study

from coreset import layout
from coreset.cluster.gradients import run_gradients
from coreset.cluster.retrain import run_retrain, tune_experiment_dir
from coreset.cluster.score import run_score
from coreset.stages.retrain import trial_grid
from coreset.stages.train import train_source
from coreset.storage import StudyRoot

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _gradients_cfg(*extra: str):
    return synthetic_study("faults", "data.synthetic_size=1200", "train.epochs=2", "gradients.norms=[l1, l2, linf]",
                           "gradients.factor_epochs=[1]", "gradients.shard_size=50", "gradients.batch_size=50",
                           "gradients.bound_batches=0", "gradients.final_epoch=last", "gradients.workers=1",
                           "gradients.cpus_per_worker=1", *extra)


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study root holding finished source training (in-process: the faults are later)."""
    path = tmp_path_factory.mktemp("source")
    train_source(_gradients_cfg(), StudyRoot(str(path)))
    return path


def _copy(src: Path, dst: Path) -> StudyRoot:
    shutil.copytree(src, dst)
    return StudyRoot(str(dst))


def _one_row_per_sample_and_epoch(root: StudyRoot, epochs: list[int]) -> pd.DataFrame:
    df = pd.read_parquet(root.url(layout.GRADIENTS))
    split = pd.read_parquet(root.url(layout.SPLIT))
    train_ids = np.sort(split.sample_id[split.split == "train"].to_numpy())
    assert sorted(df.epoch.unique()) == epochs
    assert not df.duplicated(["sample_id", "epoch"]).any()
    for _, rows in df.groupby("epoch"):
        assert np.array_equal(np.sort(rows.sample_id.to_numpy()), train_ids)
    return df


def test_killed_gradient_actor_is_replaced_and_no_row_is_lost_or_doubled(source_root: Path, tmp_path: Path) -> None:
    root = _copy(source_root, tmp_path / "study")
    cfg = _gradients_cfg()
    shards = tmp_path / "study" / layout.GRADIENTS
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        with ThreadPoolExecutor(1) as driver:
            stage = driver.submit(run_gradients, cfg, root, dict(ray.cluster_resources()))
            wait_for(lambda: len(parquet_files(shards)) >= 2, 120, "the first gradient shards")
            done_at_kill = len(parquet_files(shards))
            killed = kill_one("GradientWorker")
            summary = stage.result(timeout=300)
        print(f"killed actor pid {killed} after {done_at_kill} shards")
    finally:
        ray.shutdown()
    assert summary.shards_computed == summary.shards_total and done_at_kill < summary.shards_total
    _one_row_per_sample_and_epoch(root, [1, 2])


def _study(config: Path, root: Path, *stages: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "jobs" / "study.py"), "--config", str(config),
                             "--root", str(root), "--stages", *stages],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout_s: float = 300) -> str:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        raise
    assert proc.returncode == 0, err[-3000:]
    return err


def _sorted(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values(keys).reset_index(drop=True)


@pytest.mark.slow
def test_study_killed_during_gradients_resumes_without_recomputing_finished_shards(source_root: Path,
                                                                                 tmp_path: Path) -> None:
    cfg = _gradients_cfg("score.methods=[random, max_gradient, gradsimcore]", "score.fractions=[0.1]",
                         "score.seeds=[0]")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    stages = ("gradients", "score")
    reference = _copy(source_root, tmp_path / "reference")
    _finish(_study(config, tmp_path / "reference", *stages))

    victim = _copy(source_root, tmp_path / "victim")
    shards = tmp_path / "victim" / layout.GRADIENTS
    proc = _study(config, tmp_path / "victim", *stages)
    try:
        wait_for(lambda: len(parquet_files(shards)) >= 3, 180, "the first gradient shards")
    finally:
        kill_session(proc)
    finished = parquet_files(shards)
    inodes = {p: p.stat().st_ino for p in finished}
    err = _finish(_study(config, tmp_path / "victim", *stages))

    after = parquet_files(shards)
    total = len(after)
    assert f"stage gradients: {total - len(finished)} of {total} shards to compute" in err
    assert all(after[p] == t and p.stat().st_ino == inodes[p] for p, t in finished.items())  # not recomputed
    assert not [p for p in shards.rglob(".*") if ".tmp-" in p.name]  # partial writes of the killed run are gone
    print(f"killed after {len(finished)} of {total} shards; recomputed 0, computed {total - len(finished)}")

    got = _one_row_per_sample_and_epoch(victim, [1, 2])
    want = _one_row_per_sample_and_epoch(reference, [1, 2])
    pd.testing.assert_frame_equal(_sorted(got, ["epoch", "sample_id"]), _sorted(want, ["epoch", "sample_id"]))
    for table in (layout.SCORES, layout.SUBSETS):
        a, b = pd.read_parquet(victim.url(table)), pd.read_parquet(reference.url(table))
        keys = [c for c in ("method", "fraction", "seed", "sample_id") if c in a.columns]
        pd.testing.assert_frame_equal(_sorted(a, keys), _sorted(b, keys))


def _retrain_cfg(*extra: str):
    return _gradients_cfg("score.methods=[random, max_gradient]", "score.fractions=[0.2, 0.4]", "score.seeds=[0, 1]",
                          "retrain.full_data=false", "retrain.policy=steps", "retrain.steps=1500",
                          "retrain.evaluations=1", "retrain.max_failures=3", *extra)


@pytest.fixture(scope="module")
def scored_root(source_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study root ready for retraining (gradient table, scores and subsets)."""
    path = tmp_path_factory.mktemp("scored") / "study"
    root = _copy(source_root, path)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        run_gradients(_retrain_cfg(), root, dict(ray.cluster_resources()))
        run_score(_retrain_cfg(), root, dict(ray.cluster_resources()))
    finally:
        ray.shutdown()
    return path


@pytest.mark.slow
def test_lost_worker_node_during_retraining_every_trial_finishes(scored_root: Path, tmp_path: Path) -> None:
    root = _copy(scored_root, tmp_path / "study")
    cfg = _retrain_cfg("retrain.fractions=[0.2]", f"data.cache_dir={tmp_path / 'cache'}")
    rows = tmp_path / "study" / layout.RETRAIN
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        with ThreadPoolExecutor(1) as driver:
            stage = driver.submit(run_retrain, cfg, root, dict(ray.cluster_resources()))
            raylet = worker.all_processes["raylet"][0].process.pid
            wait_for(lambda: bool(worker_processes_of(raylet, "ray::ImplicitFunc")), 300, "a trial on the worker node")
            time.sleep(2)  # well inside the trial's training
            finished_before = len(parquet_files(rows))
            cluster.remove_node(worker)
            accuracy = stage.result(timeout=400)
    finally:
        ray.shutdown()
        cluster.shutdown()
    grid = trial_grid(cfg)
    assert len(accuracy) == len(grid) and not accuracy.duplicated(["method", "fraction", "seed"]).any()
    failures = tune_trial_failures(tune_experiment_dir(cfg, root, grid))
    assert sum(failures.values()) >= 1  # the trial on the removed node failed, and was run again
    print(f"node removed after {finished_before} of {len(grid)} trials; failed and retried: {sum(failures.values())}")


@pytest.mark.slow
def test_interrupted_tune_run_is_restored_and_runs_only_unfinished_trials(scored_root: Path, tmp_path: Path) -> None:
    # Four trials in two packs of two, both at once: each pack's first trial finishes, and the
    # interrupt meets the second; the restored packs skip the trials that have their rows.
    cfg = _retrain_cfg("retrain.fractions=[0.2]", "retrain.steps=500", "retrain.trials_per_pack=2",
                       f"data.cache_dir={tmp_path / 'cache'}")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    _copy(scored_root, tmp_path / "study")
    rows = tmp_path / "study" / layout.RETRAIN / "trials"
    cmd = [sys.executable, str(REPO / "jobs" / "retrain.py"), "--config", str(config),
           "--root", str(tmp_path / "study")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        wait_for(lambda: len(parquet_files(rows)) >= 2, 300, "two finished trials")
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
        _, err = proc.communicate(timeout=120)
    finally:
        kill_session(proc)
    finished = parquet_files(rows)
    grid = trial_grid(cfg)
    assert proc.returncode == 2 and len(finished) < len(grid)
    assert err.strip().splitlines()[-1] == (f"error: retraining was interrupted with {len(finished)} of {len(grid)} "
                                            f"trials finished; run the same command again to continue")

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    after = parquet_files(rows)
    assert len(after) == len(grid)
    assert all(after[p] == t for p, t in finished.items())  # finished trials were not run again
    assert "restoring the interrupted Tune run" in again.stderr
    assert not list((tmp_path / "study").rglob("*.pkl"))  # Tune's pickles stay out of the study root
    print(f"interrupted after {len(finished)} of {len(grid)} trials; second run trained {len(after) - len(finished)}")
