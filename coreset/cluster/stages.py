"""The study's stages in order, one entry each: the Ray half that runs it, the pure check
that refuses contradicting settings before any work, and the line that reports its result.
Every job runs stages from this table (``jobs/<stage>.py`` one, ``jobs/study.py`` several)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from coreset.cluster.gradients import GradientsSummary, run_gradients
from coreset.cluster.retrain import run_retrain
from coreset.cluster.score import ScoreSummary, run_score
from coreset.cluster.train import run_train
from coreset.config import StudyConfig
from coreset.report import print_summary
from coreset.stages import gradients
from coreset.stages.report import ReportResult, write_report
from coreset.stages.train import SourceResult
from coreset.storage import StudyRoot

log = logging.getLogger("coreset")


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StudyConfig, StudyRoot, dict[str, float]], Any]
    report: Callable[[Any, StudyRoot], None]
    check: Callable[[StudyConfig, StudyRoot], None] | None = None  # pure; reads the root only


def _report_train(result: SourceResult, root: StudyRoot) -> None:
    log.info("source model: best epoch %d, validation accuracy %.4f, final test accuracy %.4f -> %s",
             result.best_epoch, result.best_val_acc, result.final_test_acc, root.url("source"))


def _report_gradients(summary: GradientsSummary, root: StudyRoot) -> None:
    log.info("gradients: %d rows per epoch at epochs %s (final %d); %d shards computed, %d skipped, %.1fs -> %s",
             summary.rows_per_epoch, summary.epochs, summary.final_epoch, summary.shards_computed,
             summary.shards_skipped, summary.wall_s, root.url("gradients"))


def _report_score(summary: ScoreSummary, root: StudyRoot) -> None:
    log.info("score: computed %s, skipped %s in %.1fs", summary.computed or "nothing", summary.skipped or "nothing",
             summary.wall_s)
    for method, sizes in summary.subset_sizes.items():
        log.info("subset sizes %-24s %s", method, sizes)


def _report_retrain(accuracy: pd.DataFrame, root: StudyRoot) -> None:
    print_summary(accuracy)


def _run_report(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float]) -> ReportResult:
    """The report needs no Ray: it reads the root's tables and draws in this process."""
    return write_report(cfg, root)


def _report_report(result: ReportResult, root: StudyRoot) -> None:
    log.info("report: %d figures drawn, %d unchanged, %d not drawn (%s) -> %s", len(result.drawn),
             len(result.unchanged), len(result.notes), ", ".join(sorted(result.notes)) or "none", result.index)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("train", run_train, _report_train),
    Stage("gradients", run_gradients, _report_gradients, check=gradients.check),
    Stage("score", run_score, _report_score),
    Stage("retrain", run_retrain, _report_retrain),
    Stage("report", _run_report, _report_report),
)}
