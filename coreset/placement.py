"""What each stage's unit of work asks the cluster for, and how many run at once: one rule,
read by the Ray stages when they start work and by the plan when it estimates them
(``coreset/planning.py``), so the two cannot disagree. Pure: ``resources`` is
``ray.cluster_resources()`` or what the plan sees (``{"CPU": n, "GPU": m}``)."""
from __future__ import annotations

from dataclasses import dataclass

from coreset.config import StudyConfig


@dataclass(frozen=True)
class Placement:
    """``parallel`` units at once, each with ``cpus`` CPUs and ``gpus`` GPUs, and ``threads``
    torch threads in each."""

    parallel: int
    cpus: float
    gpus: float
    threads: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"

    def ray_options(self) -> dict[str, float]:
        """What one unit asks a Ray task or actor for (``num_cpus``, ``num_gpus``); a zero is
        left out, so Ray's default applies (a task's one CPU)."""
        return {k: v for k, v in (("num_cpus", self.cpus), ("num_gpus", self.gpus)) if v}


def gpus_of(resources: dict[str, float]) -> int:
    return int(resources.get("GPU", 0))


def cpus_of(resources: dict[str, float]) -> int:
    return max(1, int(resources.get("CPU", 1)))


def train(cfg: StudyConfig, resources: dict[str, float]) -> Placement:
    """Source training: ``train.workers`` Ray Train workers (data parallel) act as one unit."""
    t = cfg.train
    use_gpu = t.use_gpu == "yes" or (t.use_gpu == "auto" and gpus_of(resources) >= t.workers)
    cpus = t.cpus_per_worker or max(1, cpus_of(resources) // t.workers)
    return Placement(1, float(cpus * t.workers), float(t.workers if use_gpu else 0), cpus)


def gradients(cfg: StudyConfig, resources: dict[str, float], max_needed: int) -> Placement:
    """The gradient actors: one per GPU (``gradients.workers`` overrides), else one per
    ``gradients.cpus_per_worker`` CPUs; never more than there are shards to compute."""
    g, gpus = cfg.gradients, gpus_of(resources)
    if gpus:
        n = g.workers or gpus
        return Placement(max(1, min(n, max_needed)), 1.0, 1.0, max(1, cpus_of(resources) // max(1, n)))
    threads = min(g.cpus_per_worker, cpus_of(resources))
    n = g.workers or max(1, cpus_of(resources) // threads)
    return Placement(max(1, min(n, max_needed)), float(threads), 0.0, threads)


def score_unit(resources: dict[str, float]) -> Placement:
    """A by-class score task: a GPU each where the cluster has them, else one CPU."""
    gpus = gpus_of(resources)
    if gpus:
        return Placement(gpus, 0.0, 1.0, 1)
    return Placement(cpus_of(resources), 1.0, 0.0, 1)


def score_driver(resources: dict[str, float]) -> Placement:
    """A method that scores the whole table at once runs in the driver, with its threads."""
    return Placement(1, 0.0, 0.0, cpus_of(resources))


def trial(cfg: StudyConfig, resources: dict[str, float]) -> Placement:
    """A retraining trial: ``retrain.cpus_per_trial`` CPUs and, on GPU clusters, a share of a
    GPU; at most ``retrain.max_concurrent`` at once when set."""
    r, gpus = cfg.retrain, gpus_of(resources)
    share = r.gpus_per_trial if gpus and r.gpus_per_trial > 0 else 0.0
    n = cpus_of(resources) // r.cpus_per_trial
    if share:
        n = min(n, int(gpus / share))
    if r.max_concurrent:
        n = min(n, r.max_concurrent)
    return Placement(max(1, n), float(r.cpus_per_trial), share, r.cpus_per_trial)
