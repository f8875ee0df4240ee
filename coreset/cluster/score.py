"""The score stage on Ray. Methods that score one class at a time (GradSimCore's class-wise
similarity counts) are spread over Ray tasks, one class each (a GPU each when the cluster
has them); the others score in the driver from the columns they declare. Each method's
scores and subsets are published whole; the resume plan (:func:`coreset.stages.score.plan`)
skips methods already written with the same settings.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pandas as pd
import ray

from coreset import layout
from coreset.cluster.runtime import gpus_available
from coreset.config import StudyConfig, config_from_dict
from coreset.methods import SelectionMethod
from coreset.progress import Progress
from coreset.stages.score import (
    MethodWork,
    build_method,
    class_labels,
    merge_classes,
    plan,
    read_inputs,
    score_class,
    subset_sizes,
    write_label_entropy,
    write_method,
)
from coreset.storage import StudyRoot

log = logging.getLogger("coreset")


@dataclass
class ScoreSummary:
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    subset_sizes: dict[str, dict[float, int]] = field(default_factory=dict)
    wall_s: float = 0.0


def _class_task(study: dict, root_uri: str, name: str, final_epoch: int, label: int
                ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One class of a by-class method, in a Ray task."""
    cfg = config_from_dict(study)
    return score_class(build_method(cfg, name, final_epoch), StudyRoot(root_uri), label)


def run_score(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float]) -> ScoreSummary:
    start = time.perf_counter()
    score_plan = plan(cfg, root)
    summary = ScoreSummary(skipped=[w.name for w in score_plan.methods if w.done])
    for work in score_plan.todo:
        if work.method.inputs().by_class:
            scores, analysis = _score_by_class(cfg, root, resources, work, score_plan.final_epoch)
        else:
            scores, analysis = _score_in_driver(work.method, root)
        write_method(cfg, root, work, scores, analysis)
        summary.computed.append(work.name)
        log.info("score: %s done (%d samples)", work.name, len(scores))
    if summary.computed or not root.exists(layout.analysis("label_entropy")):
        write_label_entropy(cfg, root, score_plan)
    summary.subset_sizes = subset_sizes(cfg, root)
    summary.wall_s = time.perf_counter() - start
    return summary


def _score_in_driver(method: SelectionMethod, root: StudyRoot) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    scores = method.score(read_inputs(root, method.inputs()))
    return scores, method.analysis_tables()


def _score_by_class(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float], work: MethodWork,
                    final: int) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    options = {"num_gpus": 1} if gpus_available(resources) else {"num_cpus": 1}
    task = ray.remote(max_retries=3)(_class_task).options(**options)
    pending = [task.remote(cfg.to_dict(), root.uri, work.name, final, int(c)) for c in class_labels(root, final)]
    progress = Progress(f"{work.name} classes", len(pending), every_s=10)
    parts = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        parts.append(ray.get(done[0]))
        progress.step()
    return merge_classes(parts)
