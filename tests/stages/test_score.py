"""The score stage over a real (small) gradient table: its resume plan in-process; every method's
subsets of exact size on real Ray (by-class methods as Ray tasks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import torch
from studies import copy_root, diagnose_in_process, ray_copy, synthetic_study

from coreset import layout
from coreset.cluster.score import run_score
from coreset.data import load_datasets
from coreset.errors import StageError
from coreset.methods.budget import class_budgets, global_budget
from coreset.methods.craig import subset_weights
from coreset.stages import gradients, score
from coreset.stages import subset_diagnostics as diagnostics
from coreset.stages.train import train_source
from coreset.storage import StudyRoot
from coreset.tables import read_table


def _cfg(*extra: str):
    return synthetic_study("score", "data.synthetic_size=400", "train.epochs=3",
                           "gradients.factor_epochs=[1, 2]", "gradients.final_epoch=last", "gradients.bound_batches=0",
                           "gradients.cpus_per_worker=1", "score.fractions=[0.01, 0.1, 0.5]", "score.seeds=[0, 1]",
                           *extra)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained source model and its gradient table (computed in-process)."""
    path = tmp_path_factory.mktemp("table")
    root, cfg = StudyRoot(str(path)), _cfg()
    train_source(cfg, root)
    gradients.compute_in_process(cfg, root, gradients.plan(cfg, root), load_datasets(cfg.data), torch.device("cpu"))
    return path


@pytest.fixture
def fresh(table: Path, tmp_path: Path) -> StudyRoot:
    return copy_root(table, tmp_path / "study")


@pytest.fixture(scope="module")
def study(table: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from ray_copy(table, tmp_path_factory.mktemp("ray") / "study")


def test_plan_marks_methods_done_by_their_settings(fresh: StudyRoot) -> None:
    cfg = _cfg()
    first = score.plan(cfg, fresh)
    assert [w.name for w in first.todo] == list(cfg.score.methods) and first.final_epoch == 3
    by_class = {w.name for w in first.methods if w.method.inputs().by_class}
    assert by_class == {"gradsimcore"}
    for work in first.todo:  # score every method in-process, one class at a time where declared
        if work.name in by_class:
            parts = [score.score_unit(work.method, fresh, first.table, unit) for unit in score.class_units(first.table)]
            scores, analysis = score.merge_units(parts)
        else:
            scores, analysis = work.method.score(score.read_inputs(fresh, work.method.inputs(), first.table)), {}
        score.write_method(cfg, fresh, work, scores, analysis)
    assert score.plan(cfg, fresh).todo == []
    changed = score.plan(_cfg("score.params.nonextreme_max_gradient.drop_fraction=0.2"), fresh)
    assert [w.name for w in changed.todo] == ["nonextreme_max_gradient"]
    assert [w.name for w in score.plan(_cfg("score.fractions=[0.2]"), fresh).todo] == list(cfg.score.methods)
    thresholds = pd.read_parquet(fresh.url(layout.analysis("gradsim_thresholds")))
    assert thresholds.groupby("epoch").size().to_dict() == {1: 4, 2: 4}  # 4 classes at each factor epoch


@pytest.mark.ray
def test_every_method_fraction_seed_has_its_exact_subset(study: StudyRoot) -> None:
    cfg = _cfg()
    summary = run_score(cfg, study, dict(ray.cluster_resources()))
    assert sorted(summary.computed) == sorted(cfg.score.methods)
    split = pd.read_parquet(study.url(layout.SPLIT))
    train_ids = set(split.sample_id[split.split == "train"])
    subsets = pd.read_parquet(study.url(layout.SUBSETS))
    for (method, fraction, _seed), rows in subsets.groupby(["method", "fraction", "seed"]):
        assert len(rows) == global_budget(len(train_ids), fraction), (method, fraction)
        assert set(rows.sample_id) <= train_ids and rows.sample_id.is_unique
    assert set(subsets.method) == set(cfg.score.methods) and subsets.seed.nunique() == 2
    scores = pd.read_parquet(study.url(layout.SCORES))
    assert scores.groupby("method").size().eq(len(train_ids)).all()
    # GradSimCore selects class-balanced subsets; Max-Gradient takes the top of l2_last.
    g = subsets[(subsets.method == "gradsimcore") & (subsets.fraction == 0.5) & (subsets.seed == 0)]
    train = split[split.split == "train"]
    counts = split.set_index("sample_id").loc[g.sample_id].label.value_counts().sort_index().to_dict()
    want = class_budgets(train.label.value_counts().sort_index().to_dict(), len(g))
    assert counts == want
    grads = pd.read_parquet(study.url(layout.GRADIENTS), columns=["sample_id", "epoch", "l2_last"])
    final = grads[grads.epoch == 3].set_index("sample_id").l2_last
    top = subsets[(subsets.method == "max_gradient") & (subsets.fraction == 0.1) & (subsets.seed == 0)].sample_id
    assert final.loc[top].min() >= final.drop(top).max()
    # Seeds matter for the random methods and not for the deterministic ones.
    def ids(m: str, s: int) -> np.ndarray:
        return subsets[(subsets.method == m) & (subsets.fraction == 0.1) & (subsets.seed == s)].sample_id.to_numpy()
    assert not np.array_equal(ids("random", 0), ids("random", 1))
    assert np.array_equal(ids("max_gradient", 0), ids("max_gradient", 1))
    entropy = pd.read_parquet(study.url(f"{layout.ANALYSIS}/label_entropy.parquet"))
    assert set(entropy.method) == {"l2_last", "gradsimcore"}

    assert summary.diagnostics == "computed"
    table = read_table(study, layout.analysis("subset_diagnostics"), "subset_diagnostics")
    assert len(table) == len(cfg.score.methods) * 3 * 2 * 4  # methods x fractions x seeds x classes

    again = run_score(cfg, study, dict(ray.cluster_resources()))
    assert again.computed == [] and sorted(again.skipped) == sorted(cfg.score.methods)
    assert again.diagnostics == "up to date"


def _write_scores(cfg, root: StudyRoot) -> None:
    score_plan = score.plan(cfg, root)
    for work in score_plan.todo:
        scores = work.method.score(score.read_inputs(root, work.method.inputs(), score_plan.table))
        score.write_method(cfg, root, work, scores, {})


def _explicit_cosines(factors: pd.DataFrame) -> tuple[float, int]:
    """Mean pairwise cosine and near-duplicates of the explicit gradients err ⊗ [h; 1] of ``factors``."""
    err, emb = np.stack(factors.err).astype(np.float64), np.stack(factors.emb).astype(np.float64)
    g = (err[:, :, None] * np.hstack([emb, np.ones((len(emb), 1))])[:, None, :]).reshape(len(err), -1)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cos = g @ g.T
    np.fill_diagonal(cos, np.nan)
    return float(np.nanmean(cos)), int((np.nanmax(cos, axis=1) >= diagnostics.NEAR_DUPLICATE_COSINE).sum())


def test_subset_diagnostics_follow_the_subsets(fresh: StudyRoot) -> None:
    """The diagnostics over a real gradient table: a row per subset and class, images adding up to
    the subset, cosines of the table's factors; recomputed only when a subset changed, skipped
    when the final checkpoint has no factors."""
    cfg = _cfg("score.methods=[random, nonextreme_max_gradient]")
    table = score.plan(cfg, fresh).table
    assert diagnostics.plan(fresh, table).skip == "no subsets written"
    _write_scores(cfg, fresh)
    assert not diagnostics.plan(fresh, table).done
    diagnose_in_process(fresh, table)
    assert diagnostics.plan(fresh, table).done
    result = read_table(fresh, layout.analysis("subset_diagnostics"), "subset_diagnostics")
    subsets = pd.read_parquet(fresh.url(layout.SUBSETS))
    keys = ["method", "fraction", "seed"]
    assert result.groupby(keys)["images"].sum().to_dict() == subsets.groupby(keys).size().to_dict()
    assert len(result) == 2 * 3 * 2 * 4 and (result.compared == result.images).all()  # no class reaches the cap
    final = pd.read_parquet(fresh.url(layout.gradient_epoch(3)), columns=["sample_id", "label", "err", "emb"])
    one = "method == 'random' and fraction == 0.5 and seed == 1"
    chosen = final[final.sample_id.isin(subsets.query(one).sample_id)]
    row = result.query(f"{one} and label == 2").iloc[0]
    mean, near = _explicit_cosines(chosen[chosen.label == 2])
    assert row.mean_cosine == pytest.approx(mean, abs=1e-5) and row.near_duplicates == near
    _write_scores(_cfg("score.methods=[random, nonextreme_max_gradient]",
                       "score.params.nonextreme_max_gradient.drop_fraction=0.2"), fresh)
    assert not diagnostics.plan(fresh, table).done  # one method's subsets were rewritten
    shard = fresh.path(layout.gradient_shard(3, 0))
    pq.write_table(pq.read_table(shard).drop_columns(["err", "emb"]), shard)
    assert "no last-layer factors" in diagnostics.plan(fresh, table).skip


def test_missing_norm_column_is_a_clear_error(fresh: StudyRoot, tmp_path: Path) -> None:
    cfg = _cfg("gradients.norms=[l2]", "score.norm=l1_all", "score.methods=[max_gradient]")
    (work,) = score.plan(cfg, fresh).todo
    with pytest.raises(StageError, match="gradient table lacks \\['l1_all'\\]"):
        score.read_inputs(fresh, work.method.inputs(), score.plan(cfg, fresh).table)
    with pytest.raises(StageError, match="no gradient table"):
        score.plan(cfg, StudyRoot(str(tmp_path / "empty")))


@pytest.mark.ray
def test_changed_settings_rescore_only_that_method(study: StudyRoot) -> None:
    run_score(_cfg(), study, dict(ray.cluster_resources()))
    again = run_score(_cfg("score.params.nonextreme_max_gradient.drop_fraction=0.2"), study,
                      dict(ray.cluster_resources()))
    assert again.computed == ["nonextreme_max_gradient"]


def test_class_units_keep_each_class_in_one_unit() -> None:
    table = {"shard_labels": [[0, 2], [3, 3], [3, 3], [3, 3], [4, 9], [10, 10], [10, 10]]}
    assert score.class_units(table) == [[0], [1, 2, 3], [4], [5, 6]]


BASELINES = ["uncertainty_least_confidence", "uncertainty_entropy", "uncertainty_margin", "el2n", "grand", "moderate",
             "herding", "kcenter_greedy", "contextual_diversity", "forgetting", "facility_location", "graphcut",
             "log_determinant", "craig", "gradmatch", "ccs"]


def _baselines_cfg():
    return _cfg(f"score.methods=[random, {', '.join(BASELINES)}]", "score.params.grand.epoch=1",
                "score.params.ccs.difficulty=herding", "score.params.ccs.beta=0.2")


def test_baselines_score_from_the_stage_table_in_process(fresh: StudyRoot) -> None:
    """Issue 12's methods read their declared columns and checkpoints from a real gradient table:
    scores for every train image, class-wise ones unit by unit, and exact-size subsets."""
    cfg = _baselines_cfg()
    work_plan = score.plan(cfg, fresh)
    inputs = {w.name: w.method.inputs() for w in work_plan.methods}
    assert inputs["grand"].epochs == (1,) and inputs["el2n"].epochs == (2,) and inputs["moderate"].epochs == (3,)
    assert {n for n, i in inputs.items() if i.by_class} == {"moderate", "herding", "kcenter_greedy",
                                                             "contextual_diversity", "facility_location", "graphcut",
                                                             "log_determinant", "craig", "gradmatch", "ccs"}
    assert inputs["craig"].columns == ("err", "emb") and inputs["craig"].epochs == (3,)
    n_train = work_plan.table["rows_per_epoch"]
    for work in work_plan.todo:
        if inputs[work.name].by_class:
            units = score.class_units(work_plan.table)
            parts = [score.score_unit(work.method, fresh, work_plan.table, u) for u in units]
            scores, analysis = score.merge_units(parts)
        else:
            scores, analysis = work.method.score(score.read_inputs(fresh, inputs[work.name], work_plan.table)), {}
        assert len(scores) == n_train and scores.score.notna().all(), work.name
        score.write_method(cfg, fresh, work, scores, analysis)
    assert score.plan(cfg, fresh).todo == []
    subsets = pd.read_parquet(fresh.url(layout.SUBSETS))
    for (method, fraction, _seed), rows in subsets.groupby(["method", "fraction", "seed"]):
        assert len(rows) == global_budget(n_train, fraction) and rows.sample_id.is_unique, (method, fraction)
    fresh.delete(layout.CORRECTNESS)  # a root trained before the correctness table existed
    with pytest.raises(StageError, match="holds no correctness table"):
        score.read_inputs(fresh, inputs["forgetting"], work_plan.table)
    def ids(m: str, s: int) -> list[int]:
        return subsets[(subsets.method == m) & (subsets.fraction == 0.1) & (subsets.seed == s)].sample_id.tolist()
    for m in BASELINES[:-1]:
        assert ids(m, 0) == ids(m, 1), m  # deterministic
    assert ids("ccs", 0) != ids("ccs", 1)
    weights = subset_weights(pd.read_parquet(fresh.url(layout.analysis("craig_assignments"))), ids("craig", 0))
    assert weights.sample_id.tolist() == sorted(ids("craig", 0))  # every class has a pick at 10%
    assert weights.weight.min() >= 1 and weights.weight.sum() == n_train  # the clusters partition the train split


@pytest.mark.ray
def test_baselines_on_ray(study: StudyRoot) -> None:
    """The by-class baselines are rebuilt by name in Ray tasks (CCS with its difficulty method)."""
    cfg = _baselines_cfg()
    summary = run_score(cfg, study, dict(ray.cluster_resources()))
    assert set(BASELINES) <= set(summary.computed)
    entropy = pd.read_parquet(study.url(f"{layout.ANALYSIS}/label_entropy.parquet"))
    curves = set(entropy.method)
    assert {"herding", "kcenter_greedy", "el2n", "grand"} <= curves and "moderate" not in curves


SWEEP = "score.sweep={gradsimcore: {threshold_quantile: [0.5, 0.9]}, nonextreme_max_gradient: {drop_fraction: [0.0]}}"


def test_a_swept_method_scores_once_per_value(fresh: StudyRoot) -> None:
    """Issue 14: each swept value is an instance with its own scores, subsets and side tables;
    the configured value keeps the method's name (a sweep added later reuses its scores), and
    adding a value scores only the new instance."""
    cfg = _cfg(SWEEP)
    work_plan = score.plan(cfg, fresh)
    names = [w.name for w in work_plan.todo]
    assert names == ["random", "max_gradient", "nonextreme_max_gradient@drop_fraction=0", "gradient_cdf",
                     "gradsimcore@threshold_quantile=0.5", "gradsimcore"]
    by_name = {w.name: w for w in work_plan.todo}
    assert by_name["gradsimcore@threshold_quantile=0.5"].method.threshold_quantile == 0.5
    assert by_name["nonextreme_max_gradient@drop_fraction=0"].method.drop_fraction == 0.0
    for name in ("gradsimcore@threshold_quantile=0.5", "gradsimcore", "nonextreme_max_gradient@drop_fraction=0",
                 "max_gradient"):
        work = by_name[name]
        units = score.class_units(work_plan.table) if work.method.inputs().by_class else [None]
        scores, analysis = score.merge_units([score.score_unit(work.method, fresh, work_plan.table, u) for u in units])
        score.write_method(cfg, fresh, work, scores, analysis)
    subsets = pd.read_parquet(fresh.url(layout.SUBSETS))
    assert set(subsets.method) == {"gradsimcore@threshold_quantile=0.5", "gradsimcore",
                                   "nonextreme_max_gradient@drop_fraction=0", "max_gradient"}
    def ids(m: str) -> list[int]:
        return subsets[(subsets.method == m) & (subsets.fraction == 0.1) & (subsets.seed == 0)].sample_id.tolist()
    assert ids("gradsimcore@threshold_quantile=0.5") != ids("gradsimcore")
    assert ids("nonextreme_max_gradient@drop_fraction=0") == ids("max_gradient")  # nothing dropped: Max-Gradient
    low = pd.read_parquet(fresh.url(layout.analysis("gradsim_thresholds@threshold_quantile=0.5")))
    high = pd.read_parquet(fresh.url(layout.analysis("gradsim_thresholds")))
    assert (low.threshold < high.threshold).all()
    more = score.plan(_cfg(SWEEP.replace("[0.5, 0.9]", "[0.5, 0.9, 0.99]")), fresh)
    assert [w.name for w in more.todo] == ["random", "gradient_cdf", "gradsimcore@threshold_quantile=0.99"]


@pytest.mark.ray
def test_swept_instances_score_on_ray(study: StudyRoot) -> None:
    """Ray tasks rebuild a swept instance by its name (its value, not the method's default)."""
    cfg = _cfg("score.sweep={gradsimcore: {threshold_quantile: [0.5, 0.9]}}")
    summary = run_score(cfg, study, dict(ray.cluster_resources()))
    assert "gradsimcore@threshold_quantile=0.5" in summary.computed
    scores = pd.read_parquet(study.url(layout.SCORES))
    low = scores[scores.method == "gradsimcore@threshold_quantile=0.5"].score.to_numpy()
    high = scores[scores.method == "gradsimcore"].score.to_numpy()
    assert low.mean() > high.mean()  # more class-mates clear the lower threshold
