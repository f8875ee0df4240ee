"""One driver per study root, through the job CLI on a local root and on moto's S3: a second
study started on a running study's root is refused with one line naming the first, which
finishes unchanged; a SIGKILLed driver's lease is taken over by the next driver (local: at
once, the kernel drops its lock; S3: once its heartbeat is older than ``--lease-timeout``)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from faults import kill_session, wait_for
from studies import SMOKE_SYNTHETIC
from test_bad_input import one_error_line

from coreset import layout
from coreset.storage import StudyRoot

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
LEASE_TIMEOUT_S = 10  # a killed driver's lease on S3 expires this long after its last heartbeat


def _cmd(root: str, *args: str) -> list[str]:
    timeout = [] if "--lease-timeout" in args else ["--lease-timeout", str(LEASE_TIMEOUT_S)]
    return [sys.executable, str(REPO / "jobs" / "study.py"), "--config", str(SMOKE), "--root", root, *timeout, *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _start(root: str, log: Path, *args: str) -> subprocess.Popen:
    """A study driver in its own session (so its embedded Ray can be killed with it); returns
    once it holds the lease and its Ray is up."""
    with open(log, "w") as err:
        proc = subprocess.Popen(_cmd(root, *args), stdout=subprocess.DEVNULL, stderr=err, env=_env(), cwd=log.parent,
                                start_new_session=True)
    wait_for(lambda: "coreset INFO ray: " in log.read_text() or proc.poll() is not None, 180, "the job's Ray")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc


def _run(root: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(root, *args), capture_output=True, text=True, timeout=300, env=_env(), cwd=cwd)


def _lease_left(root: StudyRoot) -> bool:
    return root.exists(layout.LEASE_LOCK) or root.exists(layout.LEASE_OWNER) or bool(root.list(layout.LEASE_CLAIMS))


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_one_driver_per_root(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    uri = str(tmp_path / "study") if kind == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/studies/lease"
    root = StudyRoot(uri)
    train = ["--stages", "train", "--set", *SMOKE_SYNTHETIC]

    first = _start(uri, tmp_path / "first.log", *train)
    # A second study on the same root, with a setting that would rewrite config.yaml were it let in.
    second = _run(uri, tmp_path, *train, "train.lr=0.1")
    line = one_error_line(second)
    assert line.startswith(f"error: study root {root.url()} is in use by ") and f" pid {first.pid} since " in line, line
    assert first.wait(300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert "error" not in (tmp_path / "first.log").read_text().lower()
    assert yaml.safe_load(root.read_bytes(layout.CONFIG))["train"]["lr"] == 0.05  # the first study's config
    assert root.exists(layout.SOURCE_DONE) and not _lease_left(root)

    # A driver killed while it holds the lease (here: with Ray up, before its first shard).
    gradients = ["--stages", "gradients", "--set", *SMOKE_SYNTHETIC]
    killed = _start(uri, tmp_path / "killed.log", *gradients)
    killed_at = time.monotonic()
    kill_session(killed)
    assert _lease_left(root)
    if kind == "s3":
        # The driver that looks judges staleness by its own --lease-timeout: with a long one the
        # killed driver's heartbeat is still fresh however slowly this driver starts.
        refused = _run(uri, tmp_path, "--lease-timeout", "600", *gradients)
        assert f" pid {killed.pid} since " in one_error_line(refused) and "(last heartbeat" in refused.stderr
        time.sleep(max(0.0, LEASE_TIMEOUT_S + 1 - (time.monotonic() - killed_at)))
    after = _run(uri, tmp_path, *gradients)
    assert after.returncode == 0, after.stderr[-3000:]
    taken = [ln for ln in after.stderr.splitlines() if "taking it over" in ln]
    assert len(taken) == 1 and f"pid {killed.pid}" in taken[0], after.stderr[-3000:]
    assert root.list(layout.gradient_epoch(1)) and not _lease_left(root)
