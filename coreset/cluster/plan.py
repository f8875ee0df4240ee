"""``--plan`` on the cluster a job would run on: the resources it can see, and calibration
run where the cluster's devices are (a Ray task holding a unit's GPU on a GPU cluster).
Without an address plain ``--plan`` starts no Ray: this machine is the cluster the job would
start. ``--calibrate`` also times what each stage's framework takes to start its first unit
(:func:`framework_starts`), on the joined cluster or an embedded one, as the job will."""
from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable

import pandas as pd
import ray
import ray.train
import ray.train.torch
import torch
from ray import tune

from coreset import placement
from coreset.calibrate import calibrate
from coreset.cluster.runtime import init_ray, verbose
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
    Ray joined), else in a task with a GPU (GPU clusters) or the CPUs of a gradient actor.
    Each stage's start is then what its framework took to start a unit that returns at once,
    plus the data load its workers do. Tune's start keeps its one trial's worker start, as the
    recorded one does: Tune reports a trial started only once its worker is up."""
    joined = ray.is_initialized()
    if not joined:
        rates = calibrate(cfg, datasets, split, stages, resources, load_s)
    else:
        unit = placement.gradients(cfg, resources, 1)
        options = unit.ray_options()
        task = ray.remote(max_retries=0)(_calibrate_remote).options(**options)
        rates = ray.get(task.remote(cfg.to_dict(), split, stages, resources))
    init_ray(None)  # the joined cluster, or an embedded one like the job's
    for stage, seconds in framework_starts(cfg, resources, stages).items():
        key = f"{stage}.start"
        if key in rates:
            old = rates[key]
            data = load_s if stage in ("train", "gradients") else 0.0
            rates[key] = Rate(seconds + data, "start", old.device, old.threads, "calibrated")
    return rates


def _returns(config: dict | None = None) -> None:
    """A unit of work that does nothing: what is timed is its start."""


def framework_starts(cfg: StudyConfig, resources: dict[str, float], stages: list[str]) -> dict[str, float]:
    """Seconds to start and finish a do-nothing unit in each stage's framework, as the stage
    asks for it: a Ray Train run (the study's workers), a gradient actor, a score task, a Tune
    run of one trial. Each starts fresh worker processes, which import this package; Train's
    and Tune's state goes to a temporary folder, never the root."""
    starts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="coreset-calibrate-") as tmp:
        if "score" in stages:  # first: a task takes an idle worker when there is one
            unit = placement.score_unit(resources)
            options = unit.ray_options()
            starts["score"] = _seconds(lambda: ray.get(ray.remote(_returns).options(**options).remote()))
        if "train" in stages:
            unit = placement.train(cfg, resources)
            trainer = ray.train.torch.TorchTrainer(
                _returns, scaling_config=ray.train.ScalingConfig(
                    num_workers=cfg.train.workers, use_gpu=unit.gpus > 0,
                    resources_per_worker={"CPU": unit.cpus / cfg.train.workers}),
                run_config=ray.train.RunConfig(name="train", storage_path=tmp))
            sigint = signal.getsignal(signal.SIGINT)  # Ray Train leaves its own installed (see cluster.train)
            try:
                starts["train"] = _seconds(trainer.fit)
            finally:
                signal.signal(signal.SIGINT, sigint)
        if "gradients" in stages:
            unit = placement.gradients(cfg, resources, 1)
            options = unit.ray_options()
            start = time.perf_counter()
            actor = ray.remote(_Idle).options(**options).remote()
            ray.get(actor.ready.remote())
            starts["gradients"] = time.perf_counter() - start
            ray.kill(actor)  # its CPUs go back to the cluster
        if "retrain" in stages:
            unit = placement.trial(cfg, resources)
            per_trial = {"cpu": unit.cpus, **({"gpu": unit.gpus} if unit.gpus else {})}
            if not verbose():
                os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # as the retrain stage: Tune prints nothing
            tuner = tune.Tuner(tune.with_resources(_trial, per_trial),
                               run_config=tune.RunConfig(name="retrain", storage_path=tmp, verbose=0))
            starts["retrain"] = _seconds(tuner.fit)
    return starts


def _trial(config: dict) -> None:
    """A do-nothing Tune trial. It reports once: Tune's legacy reporter prints a line for a trial
    that completes without any result, whatever the verbosity."""
    tune.report({"started": 1})


class _Idle:
    def ready(self) -> bool:
        return True


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
