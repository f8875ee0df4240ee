"""The score stage on Ray. Methods that score one class at a time (GradSimCore's class-wise
similarity counts) are spread over Ray tasks, one unit of whole-class shards each (a GPU each
when the cluster has them), each reading its own files once; the others score in the driver
from the one or two columns they declare. Each method's
scores and subsets are published whole; the resume plan (:func:`coreset.stages.score.plan`)
skips methods already written with the same settings. After the subsets, the subset diagnostics
(:mod:`coreset.stages.subset_diagnostics`) run one task per class unit too, when the subsets changed
since they were last computed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pandas as pd
import ray

from coreset import layout, placement
from coreset.config import StudyConfig, config_from_dict
from coreset.methods import SelectionMethod
from coreset.progress import Progress
from coreset.rates import rate, record_rates
from coreset.stages import subset_diagnostics
from coreset.stages.score import (
    MethodWork,
    ScorePlan,
    build_method,
    check_inputs,
    class_units,
    measured_rates,
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
    diagnostics: str = ""  # computed, up to date, or why skipped
    wall_s: float = 0.0


def _unit_task(study: dict, root_uri: str, name: str, final_epoch: int, table: dict, shards: list[int]
               ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], float]:
    """One unit of a by-class method, in a Ray task; with its seconds (reads included)."""
    start = time.perf_counter()
    cfg = config_from_dict(study)
    scores, analysis = score_unit(build_method(cfg, name, final_epoch), StudyRoot(root_uri), table, shards)
    return scores, analysis, time.perf_counter() - start


def run_score(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float],
              score_plan: ScorePlan | None = None) -> ScoreSummary:
    start = time.perf_counter()
    score_plan = score_plan or plan(cfg, root)
    check_inputs(root, score_plan)
    summary = ScoreSummary(skipped=[w.name for w in score_plan.methods if w.done])
    rates, work_s = {}, 0.0
    for work in score_plan.todo:
        began = time.perf_counter()
        if work.method.inputs().by_class:
            unit = placement.score_unit(resources)
            scores, analysis, seconds = _score_by_class(cfg, root, unit, work, score_plan)
            work_s += seconds / unit.parallel
        else:
            unit = placement.score_driver(resources)
            scores, analysis = _score_in_driver(work.method, root, score_plan)
            seconds = time.perf_counter() - began
            work_s += seconds
        rates.update(measured_rates(work, scores, seconds, unit))
        write_method(cfg, root, work, scores, analysis)
        summary.computed.append(work.name)
        log.debug("score: %s done (%d samples)", work.name, len(scores))
    if summary.computed or not root.exists(layout.analysis("label_entropy")):
        write_label_entropy(cfg, root, score_plan)
    summary.subset_sizes = subset_sizes(cfg, root)
    summary.diagnostics = _write_diagnostics(root, resources, score_plan.table)
    summary.wall_s = time.perf_counter() - start
    if rates:
        unit = placement.score_driver(resources)
        rates["score.start"] = rate(summary.wall_s - work_s, 1, "start", unit.device, unit.threads)
        record_rates(root, rates)
    return summary


def _score_in_driver(method: SelectionMethod, root: StudyRoot, score_plan: ScorePlan
                     ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    scores = method.score(read_inputs(root, method.inputs(), score_plan.table))
    return scores, method.analysis_tables()


def _score_by_class(cfg: StudyConfig, root: StudyRoot, unit: placement.Placement, work: MethodWork,
                    score_plan: ScorePlan) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], float]:
    """The method's scores and side tables over every class unit, and the units' summed seconds."""
    options = unit.ray_options()
    task = ray.remote(max_retries=3)(_unit_task).options(**options, scheduling_strategy="SPREAD")
    study, table = cfg.to_dict(), ray.put(score_plan.table)
    pending = [task.remote(study, root.uri, work.name, score_plan.final_epoch, table, unit)
               for unit in class_units(score_plan.table)]
    progress = Progress(f"score: {work.name} class units", len(pending))
    parts, seconds = [], 0.0
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        scores, analysis, took = ray.get(done[0])
        parts.append((scores, analysis))
        seconds += took
        progress.step()
    return *merge_units(parts), seconds


def _diagnostics_task(root_uri: str, table: dict, shards: list[int], subsets: pd.DataFrame) -> pd.DataFrame:
    """The subset diagnostics of one class unit, in a Ray task."""
    return subset_diagnostics.diagnose_unit(StudyRoot(root_uri), table, shards, subsets)


def _write_diagnostics(root: StudyRoot, resources: dict[str, float], table: dict) -> str:
    """``analysis/subset_diagnostics.parquet`` when the subsets changed since it was written, one
    task per class unit reached by a subset; skipped, with a logged note, when the gradient table
    lacks the final checkpoint's factors. Returns what happened, for the summary."""
    work = subset_diagnostics.plan(root, table)
    if work.skip:
        log.info("score: subset diagnostics skipped: %s", work.skip)
        return f"skipped: {work.skip}"
    if work.done:
        return "up to date"
    subsets, labels = subset_diagnostics.labelled_subsets(root)
    options = placement.score_unit(resources).ray_options()
    task = ray.remote(max_retries=3)(_diagnostics_task).options(**options, scheduling_strategy="SPREAD")
    table_ref = ray.put(table)
    pending = [task.remote(root.uri, table_ref, shards, rows)
               for shards, rows in subset_diagnostics.unit_work(subsets, table)]
    progress = Progress("score: subset diagnostics class units", len(pending))
    parts = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        parts.append(ray.get(done[0]))
        progress.step()
    subset_diagnostics.write(root, work, subset_diagnostics.merge(parts, subsets, labels))
    return "computed"
