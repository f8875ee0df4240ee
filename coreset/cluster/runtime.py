"""Join the Ray cluster a job was submitted to, or start an embedded local one."""
from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger("coreset")


class StageError(RuntimeError):
    """A stage on the cluster could not finish (e.g. trials failed after their retries)."""


def init_ray(address: str | None = None) -> dict[str, float]:
    """Connect to ``address`` (or ``RAY_ADDRESS``, set by ``ray job submit``); else start
    a local Ray on this machine. Returns the cluster's total resources.

    Without an address, ``ray.init()`` would join whatever ``ray start`` last launched on
    this machine (another user's cluster, possibly torn down mid-job); "local" always
    starts the job's own embedded Ray."""
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        # The package is importable on every node (installed there, or the job's working dir).
        ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=True)
        log.info("ray: %s", "joined cluster " + address if address else "embedded local cluster")
    return dict(ray.cluster_resources())


def gpus_available(resources: dict[str, float]) -> int:
    return int(resources.get("GPU", 0))
