"""The smoke study submitted with ``ray job submit`` to a real local Ray cluster started with
``ray start --head`` (dashboard and job server included), as on a cloud cluster (see
tests/clusters.py for how the cluster is kept apart from any other Ray on the machine)."""
from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from clusters import LocalHead, start_head, stop
from studies import SMOKE_SYNTHETIC

from coreset.config import load_config
from coreset.stages.retrain import trial_grid

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
EXCLUDES = [".git", "results", ".pytest_cache", "**/__pycache__"]


@pytest.fixture
def ray_head() -> Iterator[LocalHead]:
    head = start_head()
    try:
        yield head
    finally:
        stop(head)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_smoke_study_as_a_submitted_job(ray_head: LocalHead, tmp_path: Path) -> None:
    root = tmp_path / "study"
    submit = subprocess.run(
        ["ray", "job", "submit", "--address", ray_head.address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--log-style", "record", "--",
         "python", "jobs/study.py", "--config", "jobs/configs/smoke.yaml", "--root", str(root),
         "--set", *SMOKE_SYNTHETIC],
        capture_output=True, text=True, env=ray_head.env, timeout=480, cwd=tmp_path)
    out = submit.stdout + submit.stderr
    assert submit.returncode == 0, out[-4000:]
    job_id = re.search(r"Job '(raysubmit_\w+)' succeeded", out).group(1)
    assert "ray: joined cluster" in out  # the job joined this cluster, not an embedded Ray
    status = subprocess.run(["ray", "job", "status", "--address", ray_head.address, "--log-style", "record", job_id],
                            capture_output=True, text=True, env=ray_head.env, timeout=60)
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr

    cfg = load_config(SMOKE, SMOKE_SYNTHETIC)
    grid = trial_grid(cfg)
    accuracy = pd.read_parquet(root / "accuracy.parquet")
    assert (sorted(zip(accuracy.method, accuracy.fraction, accuracy.seed, strict=False))
            == sorted((t.method, t.fraction, t.seed) for t in grid))
    assert accuracy.test_acc.between(0, 1).all()
    split = pd.read_parquet(root / "split.parquet")
    gradients = pd.read_parquet(root / "gradients", columns=["sample_id", "epoch"])
    assert gradients.groupby(["sample_id", "epoch"]).size().eq(1).all()
    assert set(gradients.sample_id) == set(split.sample_id[split.split == "train"])
    assert (root / "config.yaml").is_file() and (root / "source" / "checkpoints" / "epoch=0001.pt").is_file()

    # The scale step of the README: on a cluster without GPUs, asking for none returns at once.
    scale = subprocess.run(
        ["ray", "job", "submit", "--address", ray_head.address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--log-style", "record", "--",
         "python", "jobs/scale.py", "--gpus", "0", "--wait-s", "30"],
        capture_output=True, text=True, env=ray_head.env, timeout=120, cwd=tmp_path)
    assert scale.returncode == 0 and "scale: 0 GPUs requested, 0 in the cluster" in scale.stdout + scale.stderr, \
        (scale.stdout + scale.stderr)[-3000:]
