"""The study's stages in order, one entry each: the Ray half that runs it, the pure check
that refuses contradicting settings before any work, and the line that reports its result.
Every job runs stages from this table (``jobs/<stage>.py`` one, ``jobs/study.py`` several)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from coreset import placement
from coreset.cluster.gradients import GradientsSummary, run_gradients
from coreset.cluster.retrain import run_retrain
from coreset.cluster.score import ScoreSummary, run_score
from coreset.cluster.train import run_train
from coreset.config import StudyConfig
from coreset.rates import rate, record_rates
from coreset.stages import gradients, report, retrain, score, train
from coreset.stages.report import ReportResult, write_report
from coreset.stages.train import SourceResult
from coreset.storage import StudyRoot


@dataclass(frozen=True)
class Stage:
    name: str
    plan: Callable[[StudyConfig, StudyRoot], Any]  # pure: what is done and left (``.summary()``)
    run: Callable[[StudyConfig, StudyRoot, dict[str, float], Any], Any]  # given the plan, not re-read
    summary: Callable[[Any, StudyRoot], str]  # the result, in the stage's last console line
    check: Callable[[StudyConfig, StudyRoot], None] | None = None  # pure; refuses contradicting settings
    show: Callable[[Any], None] | None = None  # more than a line: the accuracy table


def _train(result: SourceResult, root: StudyRoot) -> str:
    return (f"best epoch {result.best_epoch}, validation accuracy {result.best_val_acc:.4f}, "
            f"final test accuracy {result.final_test_acc:.4f} -> {root.url('source')}")


def _gradients(summary: GradientsSummary, root: StudyRoot) -> str:
    return (f"{summary.rows_per_epoch} rows per epoch at epochs {summary.epochs} (final {summary.final_epoch}), "
            f"{summary.shards_computed} shards computed, {summary.shards_skipped} skipped -> {root.url('gradients')}")


def _score(summary: ScoreSummary, root: StudyRoot) -> str:
    sizes = {str(s) for s in summary.subset_sizes.values()}
    per = f"subset sizes {sizes.pop()}" if len(sizes) == 1 else f"subset sizes {summary.subset_sizes}"
    return (f"computed {summary.computed or 'nothing'}, skipped {summary.skipped or 'nothing'}; {per}; "
            f"subset diagnostics {summary.diagnostics}")


def _retrain(accuracy: pd.DataFrame, root: StudyRoot) -> str:
    return f"{len(accuracy)} trials -> {root.url('accuracy.parquet')}"


def _run_report(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float],
                report_plan: report.ReportPlan) -> ReportResult:
    """The report needs no Ray: it reads the root's tables and draws in this process."""
    start = time.perf_counter()
    result = write_report(cfg, root, report_plan=report_plan)
    if result.drawn:
        record_rates(root, {"report.figure": rate(time.perf_counter() - start, len(result.drawn), "figure", "cpu",
                                                  placement.cpus_of(resources))})
    return result


def _report(result: ReportResult, root: StudyRoot) -> str:
    notes = ", ".join(sorted(result.notes)) or "none"
    return (f"{len(result.drawn)} figures drawn, {len(result.unchanged)} unchanged, {len(result.notes)} not drawn "
            f"({notes}) -> {result.index}")


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("train", train.plan, run_train, _train),
    Stage("gradients", gradients.plan, run_gradients, _gradients, check=gradients.check),
    Stage("score", score.plan, run_score, _score),
    Stage("retrain", retrain.plan, run_retrain, _retrain, show=retrain.print_summary),
    Stage("report", report.plan, _run_report, _report),
)}
