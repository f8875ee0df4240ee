"""The smoke study through the job CLI with ``--root s3://...`` on moto's S3 server: every
stage's tables, the checkpoints and Ray Train's storage land in the bucket (Tune's pickled
state does not), pandas reads them back, a re-run does nothing, and no credential is
written or logged anywhere."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from s3 import KEY_ID, SECRET
from studies import SMOKE_SYNTHETIC

from coreset import layout
from coreset.checkpoints import load_checkpoint
from coreset.config import load_config
from coreset.stages.retrain import trial_grid
from coreset.storage import StudyRoot

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"


def _study(root: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "study.py"), "--config", str(SMOKE), "--root", root,
                           "--set", *SMOKE_SYNTHETIC], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_smoke_study_on_an_s3_root(s3_bucket: str, s3_env, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}/studies/smoke"
    proc = _study(root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not any(tmp_path.iterdir())  # nothing written beside the job

    keys = set(s3_env.objects(s3_bucket))
    prefix = "studies/smoke/"
    for rel in ("config.yaml", "split.parquet", layout.checkpoint(0), layout.checkpoint(1), layout.RESUME,
                layout.TRAIN_LOG, layout.TRAJECTORY, layout.SOURCE_DONE, layout.gradient_shard(1, 0),
                layout.BATCH_BOUND, layout.scores("gradsimcore"), layout.subsets("random"), layout.ACCURACY):
        assert prefix + rel in keys, rel
    assert any(k.startswith(prefix + "source/ray_train/") for k in keys)

    cfg = load_config(SMOKE, SMOKE_SYNTHETIC)
    grid = trial_grid(cfg)
    accuracy = pd.read_parquet(f"{root}/accuracy.parquet")  # plain pandas: pyarrow's S3 from the environment
    assert (sorted(zip(accuracy.method, accuracy.fraction, accuracy.seed, strict=False))
            == sorted((t.method, t.fraction, t.seed) for t in grid))
    split = pd.read_parquet(f"{root}/split.parquet")
    train_ids = set(split.sample_id[split.split == "train"])
    gradients = pd.read_parquet(f"{root}/gradients", columns=["sample_id", "epoch", "l2_last"])
    assert gradients.groupby(["sample_id", "epoch"]).size().eq(1).all()
    assert set(gradients.sample_id) == train_ids and set(gradients.epoch) == {1}
    subsets = pd.read_parquet(f"{root}/subsets")
    assert set(subsets.method) == {"random", "gradsimcore"} and set(subsets.sample_id) <= train_ids
    assert set(pd.read_parquet(f"{root}/scores").method) == {"random", "gradsimcore"}
    state = load_checkpoint(StudyRoot(root), layout.checkpoint(1), {"model": "mnist_cnn", "dataset": "synthetic"})
    assert state["epoch"] == 1

    assert not [k for k in keys if k.endswith(".pkl")]  # Tune's pickled state stays beside the driver

    # A second run finds every output in the bucket and rewrites nothing.
    before = s3_env.objects(s3_bucket)
    again = _study(root, tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "stage gradients: 0 of " in again.stderr and f"stage retrain: 0 of {len(grid)} trials" in again.stderr
    after = s3_env.objects(s3_bucket)
    assert ({k: v for k, v in after.items() if k.endswith(".parquet")}
            == {k: v for k, v in before.items() if k.endswith(".parquet")})

    # Credentials came from the environment only: no object and no log line carries them.
    for key, data in after.items():
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, key
    for out in (proc.stdout, proc.stderr, again.stdout, again.stderr):
        assert SECRET not in out and KEY_ID not in out
