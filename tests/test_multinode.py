"""Several nodes: a 3-node Ray cluster on loopback (``ray start --head`` and two ``ray start
--address`` worker nodes, each its own raylet), the smoke study submitted with ``ray job submit``
to an S3 root on the local S3 server. Ray's task records show that gradient shards, class
scoring and retraining trials ran on more than one node, and the tables hold every row once.

The root is on S3, so this is also the S3 root's end-to-end test: every stage's tables, the
checkpoints and Ray Train's storage land in the bucket (Tune's pickled state does not),
pandas reads them back, the same study run again as a local job (embedded Ray) rewrites
nothing, and no credential is written or logged anywhere.

The job runs the installed package (no ``--working-dir``; test_readme_submit covers that on one
node): the runtime-env agents of several raylets on one host share one ``runtime_resources``
folder, and one node's clean-up deletes a working dir that the driver on another still runs in.
That is a limit of simulating nodes on one machine, not of a cluster."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
from clusters import add_worker, start_head, stop, wait_nodes
from s3 import KEY_ID, SECRET
from studies import SMOKE_SYNTHETIC

from coreset import layout
from coreset.checkpoints import load_checkpoint
from coreset.config import load_config
from coreset.stages.retrain import trial_grid
from coreset.storage import StudyRoot

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
# One CPU per node, so that concurrent work must spread over the nodes; several shards, class
# units and trials, so that there is work to spread.
SPREAD = [*SMOKE_SYNTHETIC, "train.cpus_per_worker=1", "gradients.shard_size=64", "gradients.cpus_per_worker=1",
          "retrain.cpus_per_trial=1", "score.fractions=[0.05, 0.1]", "score.seeds=[0, 1]",
          "retrain.policy=early_stopping", "retrain.validate_every=5", "retrain.patience=2"]  # trials read the split


def _nodes_by_task(head) -> dict[str, set[str]]:
    """Node ids each task name ran on, from Ray's task records (the state API)."""
    out = subprocess.run(["ray", "list", "tasks", "--address", head.address, "--format", "json", "--detail",
                          "--limit", "10000"], capture_output=True, text=True, env=head.env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    nodes: dict[str, set[str]] = defaultdict(set)
    for task in json.loads(out.stdout):
        if task.get("node_id") and task.get("state") == "FINISHED":
            nodes[task["name"]].add(task["node_id"])
    return nodes


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_smoke_study_spreads_over_three_nodes(s3_bucket: str, s3_env, tmp_path: Path) -> None:
    head = start_head(num_cpus=1)  # after s3_env: every node's workers reach the local S3 server
    try:
        for nodes in (2, 3):  # one at a time: two raylets starting together on one host can time out
            add_worker(head, num_cpus=1)
            wait_nodes(head, nodes)
        root = f"s3://{s3_bucket}/studies/multinode"
        submit = subprocess.run(
            ["ray", "job", "submit", "--address", head.address, "--log-style", "record", "--",
             "python", str(REPO / "jobs" / "study.py"), "--config", str(SMOKE), "--root", root, "--set", *SPREAD],
            capture_output=True, text=True, env=head.env, timeout=780, cwd=tmp_path)
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
        nodes = _nodes_by_task(head)
    finally:
        stop(head)

    def ran_on(prefix: str) -> set[str]:
        return set().union(*(ids for name, ids in nodes.items() if name.startswith(prefix)))

    assert len(ran_on("GradientWorker.run")) >= 2, dict(nodes)
    assert len(ran_on("_unit_task")) >= 2, dict(nodes)
    assert len(ran_on("_trainable.train")) >= 2, dict(nodes)  # Tune names trial actors after the trainable

    cfg = load_config(SMOKE, SPREAD)
    accuracy = pd.read_parquet(f"{root}/accuracy.parquet")
    assert (sorted(zip(accuracy.method, accuracy.fraction, accuracy.seed, strict=True))
            == sorted((t.method, t.fraction, t.seed) for t in trial_grid(cfg)))
    split = pd.read_parquet(f"{root}/split.parquet")
    train = set(split.sample_id[split.split == "train"])
    gradients = pd.read_parquet(f"{root}/gradients", columns=["sample_id", "epoch"])
    assert not gradients.duplicated().any() and gradients.groupby("epoch").sample_id.apply(set).eq(train).all()
    scores = pd.read_parquet(f"{root}/scores")
    assert scores.groupby("method").sample_id.apply(lambda s: s.is_unique and set(s) == train).all()
    _check_s3_root(s3_env, s3_bucket, root, tmp_path, submit.stdout + submit.stderr)


def _check_s3_root(s3_env, bucket: str, root: str, cwd: Path, console: str) -> None:
    """What a study leaves in its bucket; then the same study again, as a local job."""
    assert not any(cwd.iterdir())  # nothing written beside the job
    keys = set(s3_env.objects(bucket))
    prefix = root.removeprefix(f"s3://{bucket}/") + "/"
    for rel in ("config.yaml", "split.parquet", layout.checkpoint(0), layout.checkpoint(1), layout.RESUME,
                layout.TRAIN_LOG, layout.TRAJECTORY, layout.SOURCE_DONE, layout.gradient_shard(1, 0),
                layout.BATCH_BOUND, layout.scores("gradsimcore"), layout.subsets("random"), layout.ACCURACY):
        assert prefix + rel in keys, rel
    assert any(k.startswith(prefix + "source/ray_train/") for k in keys)
    assert not [k for k in keys if k.endswith(".pkl")]  # Tune's pickled state stays beside the driver
    state = load_checkpoint(StudyRoot(root), layout.checkpoint(1), {"model": "mnist_cnn", "dataset": "synthetic"})
    assert state["epoch"] == 1

    before = s3_env.objects(bucket)
    again = subprocess.run([sys.executable, str(REPO / "jobs" / "study.py"), "--config", str(SMOKE), "--root", root,
                            "--set", *SPREAD], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert again.returncode == 0, again.stderr[-4000:]
    grid = trial_grid(load_config(SMOKE, SPREAD))
    assert "stage gradients: 0 of " in again.stderr and f"stage retrain: 0 of {len(grid)} trials" in again.stderr
    after = s3_env.objects(bucket)
    assert ({k: v for k, v in after.items() if k.endswith(".parquet")}
            == {k: v for k, v in before.items() if k.endswith(".parquet")})

    # Credentials came from the environment only: no object and no log line carries them.
    for key, data in after.items():
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, key
    for out in (console, again.stdout, again.stderr):
        assert SECRET not in out and KEY_ID not in out
