"""The smoke study end to end on real MNIST with real Ray and Tune, through the job CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from coreset.config import load_config
from coreset.methods.budget import global_budget
from coreset.stages.retrain import trial_grid

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"


def _study(root: Path, shared: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "study.py"), "--config", str(SMOKE), "--root", str(root),
                           "--set", f"data.root={shared}", *extra],
                          capture_output=True, text=True, timeout=1200, cwd=REPO)


@pytest.mark.slow
@pytest.mark.ray
def test_smoke_study_end_to_end(tmp_path: Path, shared_data: Path) -> None:
    proc = _study(tmp_path, shared_data)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = load_config(SMOKE)
    accuracy = pd.read_parquet(tmp_path / "accuracy.parquet")
    grid = trial_grid(cfg)
    assert len(accuracy) == len(grid)
    assert (set(zip(accuracy.method, accuracy.fraction, accuracy.seed, strict=False))
            == {(t.method, t.fraction, t.seed) for t in grid})
    assert accuracy.test_acc.between(0, 1).all() and (accuracy.best_test_acc >= accuracy.test_acc).all()
    assert "test accuracy (%) of mnist_cnn" in proc.stdout

    split = pd.read_parquet(tmp_path / "split.parquet")
    n_train = int((split.split == "train").sum())
    subsets = pd.read_parquet(tmp_path / "subsets")
    for (method, fraction, seed), rows in subsets.groupby(["method", "fraction", "seed"]):
        assert len(rows) == global_budget(n_train, fraction)
        trained = accuracy[(accuracy.method == method) & (accuracy.fraction == fraction) & (accuracy.seed == seed)]
        assert trained.empty or trained.n_train.iloc[0] == len(rows)
    assert accuracy[accuracy.method == "full"].n_train.eq(n_train).all()
    assert (tmp_path / "config.yaml").is_file()

    # A second run finds every stage's outputs and does no work.
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    again = _study(tmp_path, shared_data)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "stage gradients: 0 of " in again.stderr and f"stage retrain: 0 of {len(grid)} trials" in again.stderr
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    assert after == before  # nothing rewritten
