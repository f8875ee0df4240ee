"""The smoke study submitted with ``ray job submit`` to a real local Ray cluster started with
``ray start --head`` (dashboard and job server included), as on a cloud cluster.

Other Ray sessions may run on this machine at the same time, and ``ray stop`` kills every
Ray process of the machine, so the cluster gets its own free ports, temp dir and auth token,
and teardown ends only the processes it started (its process group, plus anything whose
command line names its temp dir, plus their children).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
from s3 import free_port
from studies import SMOKE_SYNTHETIC

from coreset.config import load_config
from coreset.stages.retrain import trial_grid

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
EXCLUDES = [".git", "results", ".pytest_cache", "**/__pycache__"]


@dataclass
class LocalHead:
    address: str  # the job server (dashboard) URL
    env: dict[str, str]  # what a client needs: the cluster's auth token
    temp_dir: Path
    proc: subprocess.Popen


def _wait_ready(head: LocalHead, log: Path, timeout_s: float = 90) -> None:
    request = urllib.request.Request(f"{head.address}/api/version",
                                     headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if head.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not come up:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def _stop(head: LocalHead) -> None:
    """End this cluster's processes only (never ``ray stop``: it would end every Ray on the machine)."""
    procs: set[psutil.Process] = set()
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid == head.proc.pid or os.getpgid(p.pid) == head.proc.pid or \
                    any(str(head.temp_dir) in arg for arg in p.info["cmdline"] or ()):
                procs.add(p)
        except (psutil.Error, ProcessLookupError):
            pass
    for p in list(procs):
        try:
            procs.update(p.children(recursive=True))
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    try:
        head.proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(head.proc.pid, signal.SIGKILL)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_head() -> Iterator[LocalHead]:
    # A short temp dir of our own: Ray's Unix sockets live under it (108-byte path limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # Token auth (default for local clusters since Ray 2.59) with a token of our own, not ~/.ray/auth_token.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port, dashboard = free_port(), free_port()
    ports = {flag: free_port() for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                            "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                            "--metrics-export-port", "--node-manager-port", "--object-manager-port")}
    log = temp_dir / "ray_start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
             *[a for flag, p in ports.items() for a in (flag, str(p))],
             "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", str(temp_dir), "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    head = LocalHead(f"http://127.0.0.1:{dashboard}", env, temp_dir, proc)
    try:
        _wait_ready(head, log)
        yield head
    finally:
        _stop(head)


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
