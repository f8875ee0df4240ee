"""The score stage on Ray. Methods that score one class at a time (GradSimCore's class-wise
similarity counts) are spread over Ray tasks, one unit of whole-class shards each (a GPU each
when the cluster has them), each reading its own files once; the others score in the driver
from the one or two columns they declare. Each method's
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
    ScorePlan,
    build_method,
    class_units,
    merge_units,
    plan,
    read_inputs,
    score_unit,
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


def _unit_task(study: dict, root_uri: str, name: str, final_epoch: int, table: dict, shards: list[int]
               ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One unit of a by-class method, in a Ray task."""
    cfg = config_from_dict(study)
    return score_unit(build_method(cfg, name, final_epoch), StudyRoot(root_uri), table, shards)


def run_score(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float],
              score_plan: ScorePlan | None = None) -> ScoreSummary:
    start = time.perf_counter()
    score_plan = score_plan or plan(cfg, root)
    summary = ScoreSummary(skipped=[w.name for w in score_plan.methods if w.done])
    for work in score_plan.todo:
        if work.method.inputs().by_class:
            scores, analysis = _score_by_class(cfg, root, resources, work, score_plan)
        else:
            scores, analysis = _score_in_driver(work.method, root, score_plan)
        write_method(cfg, root, work, scores, analysis)
        summary.computed.append(work.name)
        log.debug("score: %s done (%d samples)", work.name, len(scores))
    if summary.computed or not root.exists(layout.analysis("label_entropy")):
        write_label_entropy(cfg, root, score_plan)
    summary.subset_sizes = subset_sizes(cfg, root)
    summary.wall_s = time.perf_counter() - start
    return summary


def _score_in_driver(method: SelectionMethod, root: StudyRoot, score_plan: ScorePlan
                     ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    scores = method.score(read_inputs(root, method.inputs(), score_plan.table))
    return scores, method.analysis_tables()


def _score_by_class(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float], work: MethodWork,
                    score_plan: ScorePlan) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    options = {"num_gpus": 1} if gpus_available(resources) else {"num_cpus": 1}
    task = ray.remote(max_retries=3)(_unit_task).options(**options, scheduling_strategy="SPREAD")
    study, table = cfg.to_dict(), ray.put(score_plan.table)
    pending = [task.remote(study, root.uri, work.name, score_plan.final_epoch, table, unit)
               for unit in class_units(score_plan.table)]
    progress = Progress(f"score: {work.name} class units", len(pending))
    parts = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        parts.append(ray.get(done[0]))
        progress.step()
    return merge_units(parts)
