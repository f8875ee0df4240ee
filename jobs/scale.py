"""Ask the cluster's autoscaler for GPUs and wait until they have joined; or release them.

    ray job submit --address http://127.0.0.1:8265 -- python jobs/scale.py --gpus 8
    ray job submit --address http://127.0.0.1:8265 -- python jobs/scale.py --gpus 0   # release

A study sizes its stages from the GPUs present when it starts (GPU training, one gradient
actor per GPU, GPU trials), and cluster.yaml starts without GPU workers (min_workers 0), so
scale up before submitting a study. The request stays until the next call; after
``--gpus 0`` idle workers leave after the cluster's ``idle_timeout_minutes``.
"""
from __future__ import annotations

import argparse
import logging
import time

import ray
from ray.autoscaler.sdk import request_resources

from coreset.cli import configure_logging, fail
from coreset.cluster.runtime import init_ray
from coreset.placement import gpus_of

log = logging.getLogger("coreset")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, required=True, help="GPUs to keep available (0: release the request)")
    p.add_argument("--wait-s", type=float, default=1800, help="give up after this many seconds")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS)")
    ns = p.parse_args(argv)
    configure_logging()
    if ns.gpus < 0:
        p.error("--gpus must be >= 0")
    init_ray(ns.address)
    request_resources(bundles=[{"GPU": 1}] * ns.gpus)
    deadline, last_log = time.monotonic() + ns.wait_s, 0.0
    while (have := gpus_of(ray.cluster_resources())) < ns.gpus:
        if time.monotonic() > deadline:
            fail(f"{have} of {ns.gpus} GPUs joined within {ns.wait_s:.0f} s; see `ray status`")
        if time.monotonic() - last_log > 30:
            log.info("scale: %d of %d GPUs so far", have, ns.gpus)
            last_log = time.monotonic()
        time.sleep(5)
    log.info("scale: %d GPUs requested, %d in the cluster", ns.gpus, gpus_of(ray.cluster_resources()))


if __name__ == "__main__":
    main()
