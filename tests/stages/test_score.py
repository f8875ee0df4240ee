"""The score stage on real Ray over a real (small) gradient table: subsets of exact size."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ray

from coreset import layout
from coreset.cluster.gradients import run_gradients
from coreset.cluster.score import run_score
from coreset.methods.budget import class_budgets, global_budget
from coreset.stages.train import train_source
from coreset.storage import StudyRoot
from studies import synthetic_study


def _cfg(*extra: str):
    return synthetic_study("score", "data.synthetic_size=400", "train.epochs=3",
                           "gradients.factor_epochs=[1, 2]", "gradients.final_epoch=last", "gradients.bound_batches=0",
                           "gradients.cpus_per_worker=1", "score.fractions=[0.01, 0.1, 0.5]", "score.seeds=[0, 1]",
                           *extra)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    root = StudyRoot(str(tmp_path_factory.mktemp("study")))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    train_source(_cfg(), root)
    run_gradients(_cfg(), root, dict(ray.cluster_resources()))
    yield root
    ray.shutdown()


@pytest.mark.ray
def test_every_method_fraction_seed_has_its_exact_subset(study: StudyRoot) -> None:
    cfg = _cfg()
    summary = run_score(cfg, study, dict(ray.cluster_resources()))
    assert sorted(summary.computed) == sorted(cfg.score.methods)
    split = pd.read_parquet(study.url(layout.SPLIT))
    train_ids = set(split.sample_id[split.split == "train"])
    subsets = pd.read_parquet(study.url(layout.SUBSETS))
    for (method, fraction, seed), rows in subsets.groupby(["method", "fraction", "seed"]):
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

    again = run_score(cfg, study, dict(ray.cluster_resources()))
    assert again.computed == [] and sorted(again.skipped) == sorted(cfg.score.methods)


@pytest.mark.ray
def test_missing_norm_column_is_a_clear_error(study: StudyRoot, tmp_path) -> None:
    cfg = _cfg("gradients.norms=[l2]", "score.norm=l1_all", "score.methods=[max_gradient]")
    with pytest.raises(ValueError, match="gradient table lacks \\['l1_all'\\]"):
        run_score(cfg, study, dict(ray.cluster_resources()))
    with pytest.raises(ValueError, match="no gradient table"):
        run_score(cfg, StudyRoot(str(tmp_path)), {"CPU": 2})


@pytest.mark.ray
def test_changed_settings_rescore_only_that_method(study: StudyRoot) -> None:
    run_score(_cfg(), study, dict(ray.cluster_resources()))
    again = run_score(_cfg("score.drop_fraction=0.2"), study, dict(ray.cluster_resources()))
    assert again.computed == ["nonextreme_max_gradient"]
