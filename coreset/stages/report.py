"""The report stage without Ray: the papers' figures and tables of whatever a study root holds,
published as ``report/index.html`` with its PNGs and CSVs.

:func:`plan` says which figures the root's tables allow (a partial study gives a partial
report) and which are up to date. Each figure's fingerprint hashes the size and modification
time of every file it reads (pyarrow's FileInfo: the same on local and object-store roots,
without reading the data) with the settings it is drawn with; ``report/_manifest.json``
records them, so a report is redrawn only where its inputs changed and re-running a finished
one writes nothing. Figures are drawn into a local temporary folder and published through
:meth:`StudyRoot.write_bytes` (whole files only, also on s3://); the manifest goes last, so
an interrupted report is redrawn where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs

from coreset import layout
from coreset.config import StudyConfig, method_of, setting_label, setting_text
from coreset.errors import StageError
from coreset.figures.accuracy import summarise
from coreset.reporting import published
from coreset.reporting.figures import RETRAIN, SPECS, FigureSpec, Sources, magnitude_inputs
from coreset.reporting.page import Table, render
from coreset.storage import StudyRoot
from coreset.tables import read_table

VERSION = 2  # of the report's drawing: a change redraws every report


@dataclass(frozen=True)
class FigureWork:
    spec: FigureSpec
    fingerprint: str
    done: bool


@dataclass(frozen=True)
class ReportPlan:
    """The figures the root's tables allow, and why each other figure is missing."""

    figures: list[FigureWork]
    missing: dict[str, str]
    index_done: bool
    recorded: dict = field(default_factory=dict)  # report/_manifest.json as found

    @property
    def todo(self) -> list[FigureWork]:
        return [w for w in self.figures if not w.done]

    @property
    def up_to_date(self) -> bool:
        return not self.todo and self.index_done

    def summary(self) -> str:
        return f"{len(self.todo)} of {len(self.figures)} figures to draw, {len(self.missing)} without their tables"


@dataclass(frozen=True)
class ReportResult:
    index: str  # URL of report/index.html
    drawn: list[str]
    unchanged: list[str]
    notes: dict[str, str]  # figure -> why it is not in the report


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_stats(root: StudyRoot, rel: str) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of ``rel``, or of every published file under it (temporary
    files of a writer still at work are skipped)."""
    info = root.fs.get_file_info(root.path(rel))
    infos = [info]
    if info.type == pafs.FileType.Directory:
        infos = root.fs.get_file_info(pafs.FileSelector(root.path(rel), recursive=True))
    base = root.path("").rstrip("/") + "/"
    return sorted((i.path.removeprefix(base), int(i.size or 0), int(i.mtime_ns or 0)) for i in infos
                  if i.type == pafs.FileType.File and not i.base_name.startswith("."))


def fingerprint(spec: FigureSpec, src: Sources, inputs: list[tuple[StudyRoot, str]]) -> str:
    """The study's own files by relative path (a copied or moved root keeps its report; copies
    that keep modification times, like ``cp -p``, stay up to date), a compared root's by URL."""
    stats = [["" if r is src.root else r.url(), file_stats(r, rel)] for r, rel in inputs]
    return _digest({"version": VERSION, "figure": spec.name, "settings": spec.settings(src), "inputs": stats})


def _published_digest() -> str:
    return hashlib.sha256(files("coreset.data").joinpath("published.csv").read_bytes()).hexdigest()[:16]


def index_key(cfg: StudyConfig, drawn: dict[str, str], notes: dict[str, str]) -> str:
    """What the page shows: the figures drawn (by fingerprint), the reasons for the others and
    the published numbers it compares with."""
    return _digest({"version": VERSION, "name": cfg.name, "drawn": drawn, "notes": notes,
                    "published": _published_digest()})


def read_manifest(root: StudyRoot) -> dict:
    return json.loads(root.read_bytes(layout.REPORT_MANIFEST)) if root.exists(layout.REPORT_MANIFEST) else {}


def plan(cfg: StudyConfig, root: StudyRoot, compare: StudyRoot | None = None,
         replicas: tuple[StudyRoot, ...] = ()) -> ReportPlan:
    """Which figures can be drawn and which are up to date; reads listings and manifests only."""
    src = Sources(cfg, root, compare, replicas)
    recorded = read_manifest(root)
    done_figures = recorded.get("figures", {})
    work, missing = [], {}
    for spec in SPECS:
        inputs = spec.inputs(src)
        if inputs is None:
            missing[spec.name] = f"needs {spec.needs}"
            continue
        fp = fingerprint(spec, src, inputs)
        work.append(FigureWork(spec, fp, done_figures.get(spec.name) == fp))
    expected = index_key(cfg, {w.spec.name: w.fingerprint for w in work}, missing)
    return ReportPlan(work, missing, recorded.get("index") == expected and root.exists(layout.REPORT_INDEX), recorded)


def _publish_csv(root: StudyRoot, name: str, frame: pd.DataFrame) -> None:
    keep_index = not isinstance(frame.index, pd.RangeIndex)
    root.write_bytes(layout.report_file(f"{name}.csv"), frame.to_csv(index=keep_index).encode())


def accuracy_tables(cfg: StudyConfig, root: StudyRoot) -> list[Table]:
    """The summary of ``accuracy.parquet`` (method × fraction per target model, % mean ± std) and
    our numbers beside the GradSimCore paper's Tables 2-6."""
    accuracy = read_table(root, layout.ACCURACY, "accuracy")
    summary = summarise(accuracy)
    if summary.empty:
        return []
    grid = _cells(summary).pivot(index=["target_model", "method"], columns="fraction", values="cell").fillna("")
    grid.columns = [f"{f:g}" for f in grid.columns]
    grid = grid.reset_index()
    grid = _ordered(grid, ["full", "random", *cfg.score.instances])
    early = (accuracy.get("policy") == "early_stopping").all()
    which = "the best-validation checkpoint's" if early else "the final"
    tables = [Table(RETRAIN, "Test accuracy (%) by method and fraction",
                    f"Mean ± std over seeds of {which} test accuracy; method full trains on the whole train split.",
                    grid, "accuracy.csv")]
    tables += sweep_tables(cfg, root, summary)
    classes = int(read_table(root, layout.SPLIT, "split")["label"].nunique()) if root.exists(layout.SPLIT) else 0
    source = str(accuracy["source_model"].iloc[0])
    comparison, note = published.compare(summary, cfg.data.name, classes, source)
    if len(comparison):
        _publish_csv(root, "published_comparison", comparison)
    tables.append(Table(RETRAIN, "Against the GradSimCore paper (Tables 2-6)", note, comparison,
                        "published_comparison.csv" if len(comparison) else None))
    return tables


def _cells(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.assign(cell=[f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(summary["mean"], summary["std"],
                                                                                  strict=True)])


def _ordered(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Rows by target model, then ``method`` in ``order`` (the reference rows first, then the
    config's instances), any other method last."""
    rank = {m: i for i, m in enumerate(dict.fromkeys(order))}
    return frame.sort_values(["target_model", "method"], kind="stable",
                             key=lambda c: c.map(lambda m: rank.get(m, len(rank))) if c.name == "method" else c
                             ).reset_index(drop=True)


def sweep_tables(cfg: StudyConfig, root: StudyRoot, summary: pd.DataFrame) -> list[Table]:
    """For each swept method, accuracy against its setting: a row per instance (its swept
    values in columns) in the config's order, a column per fraction, Random's row for
    reference and, last, the setting of the highest mean at each fraction; published as
    ``sweep_<method>.csv``."""
    tables = []
    for method in cfg.score.sweep:
        instances = [i for i in cfg.score.instances if method_of(i) == method]
        settings = {i: cfg.score.instance_setting(i) for i in instances}
        params = list(dict.fromkeys(p for s in settings.values() for p in s))  # the swept parameters, in order
        order = [*instances, "random"]
        rows = summary[summary.method.isin(order)]
        if not rows.method.isin(instances).any():
            continue
        frame = _cells(rows).pivot(index=["target_model", "method"], columns="fraction", values="cell").fillna("")
        frame.columns = [f"{f:g}" for f in frame.columns]
        fractions = list(frame.columns)
        frame = _ordered(frame.reset_index(), order)
        for p in params:
            frame[p] = [setting_text(settings[m][p]) if p in settings.get(m, {}) else "" for m in frame.method]
        frame["method"] = [m if m == "random" else method for m in frame.method]
        best = _best_settings(rows, settings)
        frame = pd.concat([frame[["target_model", "method", *params, *fractions]], best], ignore_index=True).fillna("")
        name = f"sweep_{method}"
        _publish_csv(root, name, frame)
        tables.append(Table(RETRAIN, f"{method}: test accuracy (%) against {', '.join(params)}",
                            "Mean ± std over seeds, a row per swept setting and Random's for reference; the last "
                            "row names the setting of the highest mean at each fraction.", frame, f"{name}.csv"))
    return tables


def _best_settings(summary: pd.DataFrame, settings: dict[str, dict]) -> pd.DataFrame:
    """A row per target model naming, at each fraction, the swept setting of the highest mean."""
    rows = []
    for target, group in summary[summary.method.isin(list(settings))].groupby("target_model"):
        best = group.loc[group.groupby("fraction")["mean"].idxmax()]
        row = {"target_model": target, "method": "best setting"}
        row.update({f"{f:g}": setting_label(settings[m]) for f, m in zip(best.fraction, best.method, strict=True)})
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(cfg: StudyConfig, root: StudyRoot, compare: StudyRoot | None = None,
                 report_plan: ReportPlan | None = None, replicas: tuple[StudyRoot, ...] = ()) -> ReportResult:
    """Draw what changed, then publish the page and the manifest; a root without a single table
    to draw from is a :class:`StageError`."""
    report_plan = report_plan or plan(cfg, root, compare, replicas)
    if not report_plan.figures:
        raise StageError(f"nothing to report in {root.url()}: it holds no table of any stage; run jobs/train.py "
                         "(or jobs/study.py) first")
    if compare is not None and magnitude_inputs(compare) is None:
        raise StageError(f"--compare {compare.url()} holds no gradient ranking (scores/max_gradient.parquet or a "
                         "gradient table); give the root of a study whose gradients or scores have run")
    src = Sources(cfg, root, compare, replicas)
    drawn = {w.spec.name: w.fingerprint for w in report_plan.figures if w.done}
    notes = dict(report_plan.missing)
    new = []
    with tempfile.TemporaryDirectory(prefix="coreset-report-") as tmp:
        for work in report_plan.todo:
            name = work.spec.name
            out = work.spec.draw(src, Path(tmp) / f"{name}.png")
            if isinstance(out, str):
                notes[name] = out
                continue
            root.write_bytes(layout.report_file(f"{name}.png"), out.path.read_bytes())
            _publish_csv(root, name, out.data)
            drawn[name], new = work.fingerprint, [*new, name]
    key = index_key(cfg, drawn, notes)
    if new or report_plan.recorded.get("index") != key or not root.exists(layout.REPORT_INDEX):
        tables = accuracy_tables(cfg, root) if "accuracy" in drawn else []
        page = render(f"Study report: {cfg.name}", root.url(), list(SPECS), notes, tables)
        root.write_bytes(layout.REPORT_INDEX, page.encode())
        for stale in sorted(set(report_plan.recorded.get("figures", {})) - set(drawn)):
            root.delete(layout.report_file(f"{stale}.png"))
            root.delete(layout.report_file(f"{stale}.csv"))
        root.write_bytes(layout.REPORT_MANIFEST, json.dumps({"version": VERSION, "figures": drawn, "index": key},
                                                            indent=2, sort_keys=True).encode())
    unchanged = [w.spec.name for w in report_plan.figures if w.done]
    return ReportResult(root.url(layout.REPORT_INDEX), new, unchanged, notes)
