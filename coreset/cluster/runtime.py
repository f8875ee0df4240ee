"""Join the Ray cluster a job was submitted to, or start an embedded local one."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.exceptions import RayTaskError

from coreset.cli import fail
from coreset.errors import UserError

log = logging.getLogger("coreset")


def user_error(e: BaseException | None) -> BaseException | None:
    """The user error behind ``e``, also when Ray wrapped it on its way from a task, an actor
    or a Ray Train worker; None for anything else (a bug, whose traceback must stay)."""
    for _ in range(8):
        if isinstance(e, RayTaskError):  # checked first: it is also an instance of its cause's type
            e = e.cause
        elif hasattr(e, "worker_failures"):  # Ray Train's WorkerGroupError: rank -> exception
            e = next(iter(e.worker_failures.values()), None)  # type: ignore[union-attr]
        elif hasattr(e, "_base_exc"):  # Ray Train's UserExceptionWithTraceback
            e = e._base_exc  # type: ignore[union-attr]  # noqa: SLF001 - Ray Train keeps the user's error there only
        else:
            return e if isinstance(e, UserError) else None
    return None


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Errors a user can act on end the job with one line on stderr and exit code 2, also
    when they happened in a Ray task, actor or Train worker; other errors keep their traceback."""
    try:
        yield
    except Exception as e:
        cause = user_error(e)
        if cause is None:
            raise
        fail(str(cause))


_verbose = False


def init_ray(address: str | None = None, verbose: bool = False) -> dict[str, float]:
    """Connect to ``address`` (or ``RAY_ADDRESS``, set by ``ray job submit``); else start
    a local Ray on this machine. Returns the cluster's total resources.

    Without an address, ``ray.init()`` would join whatever ``ray start`` last launched on
    this machine (another user's cluster, possibly torn down mid-job); "local" always
    starts the job's own embedded Ray.

    The console shows the job's own lines only: what Ray's workers, Train and Tune print
    stays in Ray's session logs (``/tmp/ray/session_latest/logs``) unless ``verbose``, and
    each stage reports its progress from the driver instead."""
    global _verbose
    if not ray.is_initialized():
        _verbose = verbose
        address = address or os.environ.get("RAY_ADDRESS")
        # The package is importable on every node (installed there, or the job's working dir).
        ray.init(address=address or "local", logging_level=logging.WARNING if verbose else logging.ERROR,
                 log_to_driver=verbose)
        log.info("ray: %s", "joined cluster " + address if address else "embedded local cluster")
    return dict(ray.cluster_resources())


def verbose() -> bool:
    """Whether the job asked for Ray's own output (``--verbose``)."""
    return _verbose
