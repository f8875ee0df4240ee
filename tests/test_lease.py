"""The driver lease without Ray (coreset/lease.py), on a local root and on moto's S3: a second
holder is refused with one line naming the first, a released or killed holder's lease is taken
over (local: at once, the kernel drops the lock; S3: once its heartbeat is older than the
timeout), and two drivers claiming an S3 root at the same moment agree on one of them."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coreset import layout
from coreset.errors import LeaseError, StageError
from coreset.lease import SETTLE_S, hold_lease
from coreset.storage import StudyRoot

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 4.0  # short, so an S3 lease expires within the test

_HOLD = """
import sys, time
from coreset.lease import hold_lease
from coreset.storage import StudyRoot
with hold_lease(StudyRoot(sys.argv[1]), float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder_process(root: str, sigint_ignored: bool = False) -> subprocess.Popen:
    """Another driver process that holds ``root``'s lease until it is killed; ``sigint_ignored``:
    started as a script's background job (``nohup ... &``) is, with SIGINT ignored."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, root, str(TIMEOUT_S)], stdout=subprocess.PIPE, text=True,
                            env=env, preexec_fn=ignore)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _roots(tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> str:
    if kind == "local":
        return str(tmp_path / "study")
    return f"s3://{request.getfixturevalue('s3_bucket')}/studies/lease"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_second_holder_is_refused_naming_the_first(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    uri = _roots(tmp_path, request, kind)
    root = StudyRoot(uri)
    with hold_lease(root, TIMEOUT_S) as me:
        with pytest.raises(LeaseError) as refused, hold_lease(StudyRoot(uri), TIMEOUT_S):
            pytest.fail("a second holder got the lease")
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"study root {root.url()} is in use by ")
        assert f"{me.owner}@{me.host} pid {me.pid} since {me.since}" in message
        assert ("last heartbeat" in message) == (kind == "s3")
    assert not root.exists(layout.LEASE_LOCK) and not root.exists(layout.LEASE_OWNER)
    assert root.list(layout.LEASE_CLAIMS) == []  # released: nothing of the lease is left in the root
    with hold_lease(StudyRoot(uri), TIMEOUT_S):  # released: the next driver gets it
        pass


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_killed_holder_is_taken_over(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
                                     caplog: pytest.LogCaptureFixture) -> None:
    uri = _roots(tmp_path, request, kind)
    proc = _holder_process(uri)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.monotonic()
    caplog.set_level(logging.WARNING, logger="coreset")
    if kind == "s3":  # its heartbeat is still fresh: refused until the timeout
        with pytest.raises(LeaseError, match=rf"pid {proc.pid} since .* \(last heartbeat"), \
                hold_lease(StudyRoot(uri), TIMEOUT_S):
            pass
        time.sleep(max(0.0, TIMEOUT_S + 1 - (time.monotonic() - killed_at)))
    with hold_lease(StudyRoot(uri), TIMEOUT_S):
        pass
    taken = [r.getMessage() for r in caplog.records if "taking it over" in r.getMessage()]
    assert len(taken) == 1 and f"pid {proc.pid}" in taken[0], taken


@pytest.mark.parametrize(("kind", "background"), [("local", False), ("s3", False), ("local", True)])
def test_terminated_holder_releases_at_once(kind: str, background: bool, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    """SIGTERM (``ray job stop``) ends the holder as Ctrl-C does, releasing the lease: the next
    driver gets it at once, also on S3 where a killed one's waits for the timeout, and also
    for a driver started in a script's background, which inherits SIGINT ignored."""
    uri = _roots(tmp_path, request, kind)
    proc = _holder_process(uri, sigint_ignored=background)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    root = StudyRoot(uri)
    assert not root.exists(layout.LEASE_OWNER) and (root.local or root.list(layout.LEASE_CLAIMS) == [])
    with hold_lease(StudyRoot(uri), TIMEOUT_S * 100):  # a stale claim would be refused for 400 s
        pass


def test_two_drivers_claiming_an_s3_root_together_agree(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/studies/race"
    start, outcomes, leases = threading.Barrier(2), [], []

    def claim() -> None:
        start.wait()
        lease = hold_lease(StudyRoot(uri), TIMEOUT_S)
        try:
            leases.append(lease.__enter__())
            outcomes.append("held")
        except LeaseError:
            outcomes.append("refused")
            return
        time.sleep(SETTLE_S + 1)  # hold while the loser decides
        lease.__exit__(None, None, None)

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["held", "refused"]


def test_holder_whose_claim_was_taken_over_stops(s3_bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    """A driver that stalled past the timeout and lost its claim to another stops its job."""
    root = StudyRoot(f"s3://{s3_bucket}/studies/lost")
    with pytest.raises(LeaseError, match="was taken over by another driver"), hold_lease(root, 2.0) as me:
        root.delete(f"{layout.LEASE_CLAIMS}/{me.claim}.json")  # as a driver taking over a stale claim does
        time.sleep(10)  # the heartbeat (every 0.25 s) interrupts this
        pytest.fail("the job went on without its lease")
    assert any("stopping" in r.getMessage() for r in caplog.records)


def test_stage_stopped_by_a_lost_lease_says_so(s3_bucket: str) -> None:
    """Tune turns the stop signal into its own end (the retrain stage then reports "interrupted
    ... run again"): with the lease lost, the job's line says why instead."""
    root = StudyRoot(f"s3://{s3_bucket}/studies/lost-stage")
    with pytest.raises(LeaseError, match="was taken over by another driver"), hold_lease(root, 2.0) as me:
        root.delete(f"{layout.LEASE_CLAIMS}/{me.claim}.json")
        with contextlib.suppress(KeyboardInterrupt):  # as Tune catches SIGINT and winds its trials down
            time.sleep(10)
        raise StageError("retraining was interrupted with 3 of 9 trials finished; run the same command again")
