"""The score stage without Ray: which methods are left to score (the resume plan), the rows
each method reads, subsets for every fraction and seed, and the label-entropy analysis.

The gradient table's shards hold whole classes (:func:`coreset.stages.gradients.class_shards`),
so a method that scores one class at a time works on *units* of shards (one shard, or the
consecutive shards of a class too large for one) and every unit reads its own files once:
the stage reads the table's needed columns once in all, at 10 classes or 1000. Factor
columns arrive as Arrow-backed columns (fixed-size lists), stacked into contiguous (n, d)
arrays per class without per-row Python objects.

Every method describes itself (:mod:`coreset.methods.base`): its inputs say which columns
and checkpoints to read and whether it scores one class at a time; its settings, with the
study's fractions, seeds and budget, are what ``scores/_manifest.json`` records, so a
changed setting re-scores only that method.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from coreset import layout
from coreset.analysis import label_entropy_curve
from coreset.config import StudyConfig, method_of
from coreset.errors import StageError
from coreset.methods import METHODS, Context, Inputs, SelectionMethod
from coreset.placement import Placement
from coreset.rates import Rate, rate
from coreset.storage import StudyRoot
from coreset.tables import read_table, write_table

KEYS = ["sample_id", "label", "epoch"]


@dataclass(frozen=True)
class MethodWork:
    """One configured method: built, with the settings that identify its result."""

    name: str
    method: SelectionMethod
    settings: dict[str, Any]
    done: bool


@dataclass(frozen=True)
class ScorePlan:
    final_epoch: int
    methods: list[MethodWork]
    table: dict[str, Any]  # the gradient table's manifest: epochs, shards and the classes of each

    @property
    def todo(self) -> list[MethodWork]:
        return [m for m in self.methods if not m.done]

    def summary(self) -> str:
        return f"{len(self.todo)} of {len(self.methods)} methods to score ({', '.join(w.name for w in self.todo)})"


def gradient_manifest(root: StudyRoot) -> dict:
    if not root.exists(layout.GRADIENTS_MANIFEST):
        raise StageError(f"no gradient table in {root.url()}; run jobs/gradients.py first")
    return json.loads(root.read_bytes(layout.GRADIENTS_MANIFEST))


def context(cfg: StudyConfig, final_epoch: int) -> Context:
    return Context(final_epoch=final_epoch, factor_epochs=tuple(cfg.gradients.factor_epochs), norm=cfg.score.norm,
                   seed=cfg.seed, fractions=tuple(cfg.score.fractions), lr=cfg.train.lr)


def build_method(cfg: StudyConfig, name: str, final_epoch: int) -> SelectionMethod:
    """Method instance ``name`` as the study configures it (its ``score.params``, its swept
    values, and the study context)."""
    return METHODS.get(method_of(name)).from_study(cfg.score.method_params(name), context(cfg, final_epoch))


def configured_inputs(cfg: StudyConfig, final_epoch: int) -> dict[str, Inputs]:
    """What each configured method reads, by name: the gradient stage writes the tables beside
    the gradient table that some of them read (validation factors, DeepFool's perturbations)."""
    return {name: build_method(cfg, name, final_epoch).inputs() for name in cfg.score.instances}


def perturbation_settings(inputs: dict[str, Inputs]) -> list[tuple[tuple[str, Any], ...]]:
    """The distinct DeepFool attack settings the methods of ``inputs`` read, sorted."""
    return sorted({i.table_settings for i in inputs.values() if i.table == "perturbations"})


def method_settings(cfg: StudyConfig, method: SelectionMethod) -> dict[str, Any]:
    """Everything a method's scores and subsets depend on; a change re-scores that method."""
    s = cfg.score
    return {"fractions": list(s.fractions), "seeds": list(s.seeds), "budget": s.budget, **method.settings()}


def recorded_settings(root: StudyRoot) -> dict[str, Any]:
    return json.loads(root.read_bytes(layout.SCORES_MANIFEST)) if root.exists(layout.SCORES_MANIFEST) else {}


def plan(cfg: StudyConfig, root: StudyRoot) -> ScorePlan:
    """Every configured method, marked done when its scores and subsets were written with the
    same settings. Reads only manifests."""
    table = gradient_manifest(root)
    final = int(table["final_epoch"])
    recorded = recorded_settings(root)
    work = []
    for name in cfg.score.instances:
        method = build_method(cfg, name, final)
        settings = method_settings(cfg, method)
        done = recorded.get(name) == settings and root.exists(layout.scores(name)) and root.exists(layout.subsets(name))
        work.append(MethodWork(name, method, settings, done))
    return ScorePlan(final, work, table)


def check_inputs(root: StudyRoot, score_plan: ScorePlan) -> None:
    """Refuse, before any work, a method whose table beside the gradient table (the validation
    factors, DeepFool's perturbations) the gradient stage has not written (it was run without
    that method configured)."""
    for work in score_plan.todo:
        inputs = work.method.inputs()
        folders = [layout.VALIDATION] if inputs.validation else []
        if inputs.table == "perturbations":
            folders.append(layout.perturbation_table(inputs.table_settings))
        for folder in folders:
            if not root.exists(layout.table_manifest(folder)):
                raise StageError(f"{work.name} reads {root.url(folder)}, which the gradient stage has not written; "
                                 f"run jobs/gradients.py with this config")


def class_units(table: dict[str, Any]) -> list[list[int]]:
    """Shard indices grouped so that every class lies in exactly one group: a shard starts a new
    unit unless it continues the class the previous shard ended with."""
    units: list[list[int]] = []
    for shard, (lowest, _) in enumerate(table["shard_labels"]):
        if units and lowest == table["shard_labels"][units[-1][-1]][1]:
            units[-1].append(shard)
        else:
            units.append([shard])
    return units


def read_inputs(root: StudyRoot, inputs: Inputs, table: dict[str, Any], shards: list[int] | None = None
                ) -> pd.DataFrame:
    """The rows ``inputs`` asks for, from the shard files of its epochs (of ``shards`` only
    when given), only its columns; list columns stay Arrow-backed. Methods of source training's
    dynamics read the correctness table instead (:func:`read_correctness`), DeepFool the
    perturbation table; with ``inputs.validation`` the validation rows of the same classes
    follow the train rows, a ``split`` column telling them apart."""
    if inputs.table == "correctness":
        return read_correctness(root, inputs)
    missing_epochs = sorted(set(inputs.epochs) - set(table["epochs"]))
    if missing_epochs:
        raise StageError(f"gradient table has no rows at epochs {missing_epochs}; it holds epochs {table['epochs']}")
    shards = list(range(table["shards_per_epoch"])) if shards is None else shards
    if inputs.table == "perturbations":
        paths, what = [layout.perturbation_shard(inputs.table_settings, s) for s in shards], "perturbation table"
    else:
        paths, what = [layout.gradient_shard(e, s) for e in inputs.epochs for s in shards], "gradient table"
    rows = read_rows(root, paths, inputs.columns, what)
    if not inputs.validation:
        return rows
    return pd.concat([rows.assign(split="train"), read_validation(root, inputs, shards).assign(split="val")],
                     ignore_index=True)


def read_validation(root: StudyRoot, inputs: Inputs, shards: list[int]) -> pd.DataFrame:
    """The validation rows of the classes in ``shards`` (whole class units), ``inputs``' columns."""
    manifest = layout.table_manifest(layout.VALIDATION)
    if not root.exists(manifest):
        raise StageError(f"{root.url(layout.VALIDATION)} holds no validation factors; run jobs/gradients.py with "
                         f"this config (it computes them for the methods that read them)")
    recorded = json.loads(root.read_bytes(manifest))
    if list(inputs.epochs) != [recorded["epoch"]]:
        raise StageError(f"validation factors exist at epoch {recorded['epoch']} only, not at {list(inputs.epochs)}")
    units = [s for s in shards if s in set(recorded["files"])]  # units without validation rows have no file
    return read_rows(root, [layout.validation_shard(u) for u in units], inputs.columns, "validation table")


def read_rows(root: StudyRoot, paths: list[str], columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """``KEYS`` and ``columns`` of the files ``paths`` (relative to the root) of the table ``what``."""
    wanted = KEYS + [c for c in columns if c not in KEYS]
    if not paths:  # pyarrow cannot infer a schema from no files
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in KEYS})
    try:
        dataset = pads.dataset([root.path(p) for p in paths], filesystem=root.fs, format="parquet")
    except FileNotFoundError:
        lost = next(p for p in paths if not root.exists(p))
        raise StageError(f"{root.url(lost)} is missing; run jobs/gradients.py with this config first") from None
    missing = [c for c in wanted if c not in dataset.schema.names]
    if missing:
        raise StageError(f"{what} lacks {missing}; columns present: {dataset.schema.names}")
    arrow = dataset.to_table(columns=wanted)
    return arrow.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_fixed_size_list(t) else None)


def read_correctness(root: StudyRoot, inputs: Inputs) -> pd.DataFrame:
    """Source training's per-epoch correctness rows (its epochs ``inputs.epochs``, or all)."""
    names = [n for n in root.list(layout.CORRECTNESS) if n.endswith(".parquet")]
    if not names:
        raise StageError(f"{root.url(layout.CORRECTNESS)} holds no correctness table (source training records "
                         f"it since issue 12); train the source model into a new --root")
    paths = [root.path(f"{layout.CORRECTNESS}/{n}") for n in names]
    columns = ["sample_id", "label", "epoch"] + [c for c in inputs.columns if c not in KEYS]
    rows = pads.dataset(paths, filesystem=root.fs, format="parquet").to_table(columns=columns).to_pandas()
    return rows[rows.epoch.isin(inputs.epochs)] if inputs.epochs else rows


def score_unit(method: SelectionMethod, root: StudyRoot, table: dict[str, Any], shards: list[int]
               ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A by-class method's scores of the classes in ``shards``, and the side tables they produced."""
    scores = method.score(read_inputs(root, method.inputs(), table, shards))
    return scores, method.analysis_tables()


def merge_units(parts: list[tuple[pd.DataFrame, dict[str, pd.DataFrame]]]
                  ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One table of scores (by sample_id) and one of each side table from per-unit results."""
    scores = pd.concat([s for s, _ in parts], ignore_index=True).sort_values("sample_id").reset_index(drop=True)
    analysis: dict[str, pd.DataFrame] = {}
    for kind in sorted({k for _, a in parts for k in a}):
        table = pd.concat([a[kind] for _, a in parts if kind in a], ignore_index=True)
        keys = [c for c in ("epoch", "label", "sample_id") if c in table.columns]
        analysis[kind] = table.sort_values(keys).reset_index(drop=True) if keys else table
    return scores, analysis


def subsets_frame(work: MethodWork, scores: pd.DataFrame, cfg: StudyConfig) -> pd.DataFrame:
    """``method, fraction, seed, sample_id`` for every configured fraction and seed (``method``
    is the instance's name)."""
    budget = None if cfg.score.budget == "default" else cfg.score.budget
    parts = []
    for fraction in cfg.score.fractions:
        for seed in cfg.score.seeds:
            ids = work.method.select(scores, fraction, seed, budget)
            parts.append(pd.DataFrame({"method": work.name, "fraction": fraction, "seed": seed, "sample_id": ids}))
    return pd.concat(parts, ignore_index=True)


def write_method(cfg: StudyConfig, root: StudyRoot, work: MethodWork, scores: pd.DataFrame,
                 analysis: dict[str, pd.DataFrame]) -> None:
    """Publish one method's analysis tables, scores and subsets, then record its settings. A
    swept instance's side tables carry its setting in their name
    (``analysis/gradsim_thresholds@threshold_quantile=0.5.parquet``)."""
    setting = work.name.partition("@")[2]
    for kind, table in analysis.items():
        write_table(root, layout.analysis(f"{kind}@{setting}" if setting else kind), table, kind)
    write_table(root, layout.scores(work.name), with_method(scores, work.name), "scores")
    write_table(root, layout.subsets(work.name), subsets_frame(work, scores, cfg), "subsets")
    recorded = recorded_settings(root)
    recorded[work.name] = work.settings
    root.write_bytes(layout.SCORES_MANIFEST, json.dumps(recorded, indent=2).encode())


def write_label_entropy(cfg: StudyConfig, root: StudyRoot, score_plan: ScorePlan) -> None:
    """Label entropy of each ranking's top-k at each fraction (the paper's Figure 7); one curve
    per ranking, so methods that order samples alike (the magnitude methods) share one; a swept
    instance whose scores are its own ranking is named as the instance."""
    curves, seen = [], set()
    for work in score_plan.methods:
        ranking = work.method.ranking
        if ranking is not None and ranking == method_of(work.name):
            ranking = work.name
        if ranking is None or ranking in seen:
            continue
        seen.add(ranking)
        scores = read_table(root, layout.scores(work.name), "scores")
        curve = label_entropy_curve(scores, fractions=sorted(set(cfg.score.fractions) | {1.0}))
        curve.insert(0, "method", ranking)
        curves.append(curve)
    if curves:
        write_table(root, layout.analysis("label_entropy"), pd.concat(curves, ignore_index=True), "label_entropy")


def with_method(scores: pd.DataFrame, method: str) -> pd.DataFrame:
    out = scores[["sample_id", "label", "score"]].copy()
    out.insert(2, "method", method)
    return out


def subset_sizes(cfg: StudyConfig, root: StudyRoot) -> dict[str, dict[float, int]]:
    """Images per subset, by method and fraction (from the subsets written)."""
    subsets = pd.read_parquet(root.url(layout.SUBSETS))
    return {m: g.groupby("fraction").size().div(len(cfg.score.seeds)).astype(int).to_dict()
            for m, g in subsets.groupby("method")}


def measured_rates(work: MethodWork, scores: pd.DataFrame, seconds: float, unit: Placement) -> dict[str, Rate]:
    """A method's rate from the ``scores`` it produced in ``seconds``: per class for one scored
    by class (its tasks' summed time over the classes scored), else per row of the table. Rates
    are the method's, whichever of its swept instances measured them."""
    key = f"score.{method_of(work.name)}"
    if work.method.inputs().by_class:
        return {key: rate(seconds, scores.label.nunique(), "class", unit.device, unit.threads)}
    return {key: rate(seconds, len(scores), "row", unit.device, unit.threads)}
