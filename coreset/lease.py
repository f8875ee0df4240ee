"""One driver per study root: a job takes the root's lease before it writes anything there.

Two drivers writing one root would interleave manifests and trial rows of two runs, so a
second driver is refused with one line naming the holder. Pure (no Ray): the lease lives in
the root itself, on the same pyarrow filesystem as the study.

- **Local roots**: an exclusive ``flock`` on ``.lease.lock`` plus an owner record
  (``.lease.json``). The kernel drops the lock when its process dies, however it dies, so a
  killed driver never blocks the root; its record is left behind and the next driver says
  whom it takes over from.
- **Object stores** (``s3://``, ``gs://``): pyarrow has no create-if-absent (it ignores
  ``If-None-Match``), so each driver writes a claim ``.lease/<id>.json`` once, waits
  :data:`SETTLE_S`, then lists the claims: the earliest claim by the store's own clock
  (``LastModified``) whose heartbeat (``.lease/<id>.beat``, rewritten every
  ``timeout_s / 8``) is fresh wins; the others delete theirs and are refused. Both stores
  list strongly after a write, so two drivers that claim together agree on the earlier one
  as long as an upload takes less than the settle time. A claim whose heartbeat is older
  than ``timeout_s`` (by the store's clock, not this machine's) is deleted with a log line:
  a killed driver's lease expires. A holder that finds its own claim gone (it stalled past
  the timeout and was taken over) stops its job.
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pyarrow.fs as pafs

from coreset import layout
from coreset.errors import LeaseError, StorageError, UserError
from coreset.storage import StudyRoot

log = logging.getLogger("coreset")

DEFAULT_TIMEOUT_S = 120.0  # a heartbeat older than this (object stores) frees the lease
SETTLE_S = 2.0  # object stores: longer than one small upload plus LastModified's 1 s resolution


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lease, as its record in the root says."""
    owner: str
    host: str
    pid: int
    since: str  # UTC, the holder's clock: for people, never compared
    claim: str

    def describe(self) -> str:
        return f"{self.owner}@{self.host} pid {self.pid} since {self.since}"


def this_driver() -> Holder:
    return Holder(getpass.getuser(), socket.gethostname(), os.getpid(),
                  datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), uuid.uuid4().hex[:12])


def _holder(data: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):  # written by another version, or torn: still a claim, just unnamed
        return None


def _refusal(root: StudyRoot, holder: Holder | None, extra: str = "") -> LeaseError:
    who = holder.describe() if holder else "another driver (its record is not readable yet)"
    return LeaseError(f"study root {root.url()} is in use by {who}{extra}; one driver writes a root at a time: "
                      "wait until that job ends, or use another --root")


@contextlib.contextmanager
def hold_lease(root: StudyRoot, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Holder]:
    """Hold ``root``'s lease for the ``with`` body; released on any exit (normal, user error,
    exception). Raises :class:`LeaseError` when another live driver holds it."""
    lease = _LocalLease(root) if root.local else _ObjectLease(root, timeout_s)
    restore = _stop_on_sigterm()
    try:
        yield lease.me
    except (KeyboardInterrupt, UserError):  # a stage that ends on the stop signal says "interrupted"
        if isinstance(lease, _ObjectLease) and lease.lost.is_set():
            raise LeaseError(f"this driver's lease on {root.url()} was taken over by another driver "
                             f"(no heartbeat for {timeout_s:.0f} s); the job stopped") from None
        raise
    finally:
        for signum, handler in restore.items():
            signal.signal(signum, handler)
        lease.release()


def _stop_on_sigterm() -> dict[int, Callable[..., object] | int | None]:
    """``ray job stop`` (and ``kill``) send SIGTERM, whose default ends the driver at once and
    leaves an object-store lease to time out. Re-raised as SIGINT it stops the job as Ctrl-C
    does (Tune winds its trials down and keeps its state; elsewhere KeyboardInterrupt), and the
    lease is released on the way out. A driver started in the background of a script
    (``nohup ... &``) inherits SIGINT ignored, which would swallow that SIGINT and the lost-lease
    stop: it gets Python's KeyboardInterrupt handler back while it holds the lease. Returns the
    handlers to restore (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    restore = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))}
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        restore[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    return restore


class _LocalLease:
    def __init__(self, root: StudyRoot) -> None:
        self.root, self.me = root, this_driver()
        root.makedirs("")
        path = root.path(layout.LEASE_LOCK)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                why = f"[errno {e.errno}] {e.strerror}"  # pyarrow's wording, as every other write error
                raise StorageError(f"cannot write {root.url(layout.LEASE_LOCK)}: {why}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _refusal(root, self._record()) from None
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break  # else a releasing holder unlinked the file we locked: lock the new one
            os.close(fd)
        self.fd = fd
        previous = self._record()
        if previous:
            log.warning("lease: %s was held by %s, which ended without releasing it; taking it over",
                        root.url(), previous.describe())
        root.write_bytes(layout.LEASE_OWNER, json.dumps(asdict(self.me)).encode())

    def _record(self) -> Holder | None:
        try:
            return _holder(self.root.read_bytes(layout.LEASE_OWNER))
        except StorageError:
            return None

    def release(self) -> None:
        # Unlink while still locked: a driver waiting on this file then finds it replaced.
        with contextlib.suppress(OSError):
            os.unlink(self.root.path(layout.LEASE_OWNER))
        with contextlib.suppress(OSError):
            os.unlink(self.root.path(layout.LEASE_LOCK))
        os.close(self.fd)


@dataclass
class _Claim:
    holder: Holder | None
    claimed: datetime  # LastModified of <id>.json: the store's clock, fixed
    last: datetime  # the latest of the claim and its heartbeat


class _ObjectLease:
    def __init__(self, root: StudyRoot, timeout_s: float) -> None:
        self.root, self.timeout_s, self.me = root, timeout_s, this_driver()
        self.lost, self._stop = threading.Event(), threading.Event()
        self.claim = f"{layout.LEASE_CLAIMS}/{self.me.claim}.json"
        self.beat = f"{layout.LEASE_CLAIMS}/{self.me.claim}.beat"
        root.write_bytes(self.claim, json.dumps(asdict(self.me)).encode())
        try:
            time.sleep(SETTLE_S)
            self._decide()
        except BaseException:
            self._delete_own()
            raise
        self._thread = threading.Thread(target=self._heartbeat, name="coreset-lease", daemon=True)
        self._thread.start()

    def _claims(self) -> dict[str, _Claim]:
        sel = pafs.FileSelector(self.root.path(layout.LEASE_CLAIMS), allow_not_found=True)
        infos = {i.base_name: i for i in self.root.fs.get_file_info(sel)}
        claims = {}
        for name, info in infos.items():
            cid, _, ext = name.rpartition(".")
            if ext != "json":
                continue
            beat = infos.get(f"{cid}.beat")
            try:
                holder = _holder(self.root.read_bytes(f"{layout.LEASE_CLAIMS}/{name}"))
            except StorageError:  # released between the listing and the read
                continue
            claims[cid] = _Claim(holder, info.mtime, max(info.mtime, beat.mtime) if beat else info.mtime)
        return claims

    def _decide(self) -> None:
        self.root.write_bytes(self.beat, b"")
        claims = self._claims()
        if self.me.claim not in claims:  # stalled past the timeout while settling: taken over
            raise _refusal(self.root, None, " (this driver's claim was taken over while it started)")
        now = claims[self.me.claim].last  # the store's clock: our heartbeat, just written
        for cid, c in list(claims.items()):
            age = (now - c.last).total_seconds()
            if cid != self.me.claim and age > self.timeout_s:
                log.warning("lease: %s was held by %s, whose last heartbeat is %.0f s old (timeout %.0f s); "
                            "taking it over", self.root.url(), c.holder.describe() if c.holder else "a driver",
                            age, self.timeout_s)
                for ext in ("json", "beat"):
                    self._delete(f"{layout.LEASE_CLAIMS}/{cid}.{ext}")
                del claims[cid]
        first = min(claims, key=lambda cid: (claims[cid].claimed, cid))
        if first != self.me.claim:
            age = (now - claims[first].last).total_seconds()
            raise _refusal(self.root, claims[first].holder, f" (last heartbeat {max(age, 0):.0f} s ago)")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timeout_s / 8):
            try:
                if not self.root.exists(self.claim):
                    log.error("lease: this driver's lease on %s was taken over by another driver; stopping",
                              self.root.url())
                    self.lost.set()
                    # A real SIGINT to the main thread: it also ends a blocking wait (sleep, ray.get).
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                    return
                self.root.write_bytes(self.beat, b"")
            except (StorageError, OSError) as e:  # a store hiccup: the next beat may get through
                log.warning("lease: heartbeat on %s failed: %s", self.root.url(), e)

    def _delete(self, rel: str) -> None:
        with contextlib.suppress(OSError):
            self.root.fs.delete_file(self.root.path(rel))

    def _delete_own(self) -> None:
        self._delete(self.beat)
        self._delete(self.claim)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        self._delete_own()
