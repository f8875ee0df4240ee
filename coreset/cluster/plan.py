"""``--plan`` on the cluster a job would run on: the resources it can see, and calibration
run where the cluster's devices are (a Ray task holding a unit's GPU on a GPU cluster).
Without an address the plan starts no Ray: this machine is the cluster the job would start."""
from __future__ import annotations

import os
import time

import pandas as pd
import ray
import torch

from coreset import placement
from coreset.calibrate import calibrate
from coreset.cluster.runtime import init_ray
from coreset.config import StudyConfig, config_from_dict
from coreset.data import Datasets, load_datasets
from coreset.rates import Rate


def visible_resources(address: str | None) -> dict[str, float]:
    """The cluster's resources: joined at ``address`` (or ``RAY_ADDRESS``), else this machine's
    CPUs and GPUs, as the job's embedded Ray would count them."""
    if address or os.environ.get("RAY_ADDRESS"):
        return init_ray(address)
    return {"CPU": float(len(os.sched_getaffinity(0))), "GPU": float(torch.cuda.device_count())}


def _calibrate_remote(study: dict, split: pd.DataFrame, stages: list[str], resources: dict[str, float]
                      ) -> dict[str, Rate]:
    """Calibration in a Ray task on a cluster node: load the data there (its own load time)."""
    cfg = config_from_dict(study)
    start = time.perf_counter()
    datasets = load_datasets(cfg.data)
    return calibrate(cfg, datasets, split, stages, resources, time.perf_counter() - start)


def calibrated_rates(cfg: StudyConfig, datasets: Datasets, split: pd.DataFrame, stages: list[str],
                     resources: dict[str, float], load_s: float) -> dict[str, Rate]:
    """Rates measured on the cluster's devices: here when this process is the cluster (no
    Ray joined), else in a task with a GPU (GPU clusters) or the CPUs of a gradient actor."""
    if not ray.is_initialized():
        return calibrate(cfg, datasets, split, stages, resources, load_s)
    unit = placement.gradients(cfg, resources, 1)
    options = {"num_gpus": 1, "num_cpus": 1} if unit.gpus else {"num_cpus": unit.threads}
    task = ray.remote(max_retries=0)(_calibrate_remote).options(**options)
    return ray.get(task.remote(cfg.to_dict(), split, stages, resources))
