"""Selection methods: semantics on small known inputs, exact Gradient-CDF probabilities, budgets, errors."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from coreset.methods import METHODS, get_method
from coreset.methods.budget import check_class_budgets, class_budgets, global_budget
from coreset.similarity import count_similar


def norm_table(norms: np.ndarray, labels: np.ndarray | None = None, epoch: int = 3) -> pd.DataFrame:
    n = len(norms)
    return pd.DataFrame(
        {
            "sample_id": np.arange(n, dtype=np.int64),
            "label": np.zeros(n, np.int64) if labels is None else labels,
            "epoch": epoch,
            "loss": 0.0,
            "correct": True,
            "l2_last": norms,
            "l2_weights": norms[::-1].copy(),
        }
    )


def gradient_table(n: int, n_classes: int, epochs: tuple[int, ...], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    frames = []
    for epoch in epochs:
        err = rng.standard_normal((n, n_classes)).astype(np.float16)
        emb = np.maximum(rng.standard_normal((n, 8)), 0).astype(np.float16)
        frames.append(pd.DataFrame({"sample_id": np.arange(n), "label": labels, "epoch": epoch,
                                    "err": list(err), "emb": list(emb)}))
    return pd.concat(frames, ignore_index=True)


def test_registry_names_and_unknown_method() -> None:
    assert {"gradient_cdf", "gradsimcore", "max_gradient", "nonextreme_max_gradient", "random"} <= set(METHODS.names())
    with pytest.raises(KeyError, match="allowed: .*gradient_cdf"):
        get_method("no_such_method")  # (deepfool, the old example, is registered now)


def test_budget_rounding_and_apportionment() -> None:
    assert [global_budget(10, f) for f in (0.01, 0.25, 0.35, 1.0)] == [1, 3, 4, 10]
    assert class_budgets({0: 50, 1: 30, 2: 20}, 7) == {0: 4, 1: 2, 2: 1}  # quotas 3.5, 2.1, 1.4
    assert sum(class_budgets({c: 13 + c for c in range(7)}, 29).values()) == 29
    with pytest.raises(ValueError, match="class 1 has 2 images but a budget of 3"):
        check_class_budgets({0: 5, 1: 2}, {0: 1, 1: 3})


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01])
def test_fraction_outside_range(fraction: float) -> None:
    method = get_method("max_gradient")
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\]"):
        method.select(method.score(norm_table(np.ones(5))), fraction, seed=0)


def test_missing_norm_column_names_present_columns() -> None:
    with pytest.raises(ValueError, match=r"'l1_all' not in the gradient table; columns present: \['sample_id'"):
        get_method("max_gradient", norm="l1_all").score(norm_table(np.ones(4)))


def test_max_gradient_top_k_norm_column_and_epoch() -> None:
    table = pd.concat([norm_table(np.arange(10.0), epoch=1), norm_table(np.arange(10.0)[::-1].copy(), epoch=2)])
    last = get_method("max_gradient")
    assert last.select(last.score(table), 0.3, seed=0).tolist() == [0, 1, 2]  # epoch 2 by default
    first = get_method("max_gradient", epoch=1)
    assert first.select(first.score(table), 0.3, seed=0).tolist() == [7, 8, 9]
    weights = get_method("max_gradient", norm="l2_weights", epoch=1)
    assert weights.select(weights.score(table), 0.3, seed=0).tolist() == [0, 1, 2]
    ties = get_method("max_gradient")
    assert ties.select(ties.score(norm_table(np.ones(6))), 0.5, seed=0).tolist() == [0, 1, 2]


def test_nonextreme_excludes_top_five_percent_and_fills_from_them() -> None:
    method = get_method("nonextreme_max_gradient")
    scores = method.score(norm_table(np.arange(1.0, 101.0)))  # sample i has norm i + 1
    assert method.select(scores, 0.10, seed=0).tolist() == list(range(85, 95))  # norms 86..95, not 96..100
    assert method.select(scores, 0.97, seed=0).tolist() == list(range(0, 97))  # 95 kept + norms 96, 97
    assert len(method.select(scores, 1.0, seed=0)) == 100


def test_nonextreme_class_balanced_drops_per_class() -> None:
    labels = np.repeat([0, 1], 40)
    method = get_method("nonextreme_max_gradient")
    scores = method.score(norm_table(np.tile(np.arange(40.0), 2), labels))
    chosen = method.select(scores, 0.1, seed=0, budget="class_balanced")  # 4 per class, top 2 of 40 dropped
    assert chosen.tolist() == [34, 35, 36, 37, 74, 75, 76, 77]


def exact_inclusion(weights: np.ndarray, k: int) -> np.ndarray:
    """P(i in sample) for k successive draws without replacement, P ∝ weight among the rest."""
    probs = np.zeros(len(weights))
    for seq in itertools.permutations(range(len(weights)), k):
        p, left = 1.0, weights.sum()
        for i in seq:
            p *= weights[i] / left
            left -= weights[i]
        probs[list(seq)] += p
    return probs


@pytest.mark.parametrize("k", [2, 3])
def test_gradient_cdf_inclusion_frequencies_match_exact_probabilities(k: int) -> None:
    weights = np.array([0.5, 1.0, 1.5, 2.0, 4.0, 8.0])
    method = get_method("gradient_cdf")
    scores = method.score(norm_table(weights))
    seeds = 20000
    hits = np.zeros(len(weights))
    for seed in range(seeds):
        hits[method.select(scores, k / 6, seed)] += 1
    p = exact_inclusion(weights, k)
    assert p.sum() == pytest.approx(k)
    assert np.all(np.abs(hits / seeds - p) <= 4 * np.sqrt(p * (1 - p) / seeds))


def test_gradient_cdf_zero_norms_come_last() -> None:
    method = get_method("gradient_cdf")
    scores = method.score(norm_table(np.array([0.0, 3.0, 0.0, 1e-300, 0.0])))
    for seed in range(50):
        assert method.select(scores, 0.4, seed).tolist() == [1, 3]
        assert {1, 3} < set(method.select(scores, 0.6, seed).tolist())


@pytest.mark.parametrize("name", ["random", "gradient_cdf"])
def test_seeded_methods_reproducible(name: str) -> None:
    method = get_method(name)
    scores = method.score(norm_table(np.random.default_rng(0).random(200) + 0.1, np.arange(200) % 4))
    for budget in ("global", "class_balanced"):
        a = method.select(scores, 0.2, seed=5, budget=budget)
        assert np.array_equal(a, method.select(scores, 0.2, seed=5, budget=budget))
        assert not np.array_equal(a, method.select(scores, 0.2, seed=6, budget=budget))
        assert len(a) == 40 and len(np.unique(a)) == 40 and np.all(np.diff(a) > 0)


def test_class_balanced_is_proportional() -> None:
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    method = get_method("random")
    chosen = method.select(method.score(norm_table(np.ones(100), labels)), 0.07, seed=1, budget="class_balanced")
    assert np.bincount(labels[chosen]).tolist() == [4, 2, 1]
    with pytest.raises(ValueError, match="budget must be one of"):
        method.select(method.score(norm_table(np.ones(100), labels)), 0.07, seed=1, budget="per_class")


def test_gradsimcore_scores_are_brute_force_counts_summed_over_epochs() -> None:
    table = gradient_table(90, 3, epochs=(1, 2), seed=0)
    method = get_method("gradsimcore", threshold=0.2, backend="gram")
    scores = method.score(table)
    expected = np.zeros(90, np.int64)
    for (_, _c), rows in table.groupby(["epoch", "label"]):
        expected[rows.sample_id] += count_similar(np.stack(rows.err), np.stack(rows.emb), 0.2, "brute")
    assert np.array_equal(scores["score"].to_numpy(), expected)
    assert scores.columns.tolist() == ["sample_id", "label", "score"]
    assert method.thresholds_["threshold"].eq(0.2).all() and len(method.thresholds_) == 6
    # As the score stage reads them: factor columns Arrow-backed (fixed-size lists), not per-row arrays.
    import pyarrow as pa

    def fixed(column: pd.Series) -> pa.FixedSizeListArray:
        values = np.stack(column)
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])

    arrow = pa.table({"sample_id": table.sample_id, "label": table.label, "epoch": table.epoch,
                      "err": fixed(table.err), "emb": fixed(table.emb)})
    backed = arrow.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_fixed_size_list(t) else None)
    assert isinstance(backed.err.dtype, pd.ArrowDtype)
    assert np.array_equal(method.score(backed)["score"], expected)


def test_gradsimcore_quantile_threshold_and_class_balanced_top() -> None:
    table = gradient_table(120, 3, epochs=(1,), seed=1)
    method = get_method("gradsimcore")  # default: per-class 0.9-quantile, class-balanced
    scores = method.score(table)
    per_class = method.thresholds_.set_index("label")
    for c, rows in scores.groupby("label"):
        assert rows["score"].mean() == pytest.approx(0.1 * (per_class.loc[c, "n"] - 1), rel=0.05)
    chosen = method.select(scores, 0.1, seed=0)
    for _, rows in scores.groupby("label"):
        picked = rows[rows.sample_id.isin(chosen)]
        assert picked["score"].min() >= rows[~rows.sample_id.isin(chosen)]["score"].max()


def test_gradsimcore_backends_give_the_same_scores() -> None:
    table = gradient_table(150, 3, epochs=(1, 2), seed=3)
    fused = get_method("gradsimcore", threshold_quantile=0.8).score(table)  # one Gram pass per class
    for backend in ("faiss", "brute"):
        separate = get_method("gradsimcore", threshold_quantile=0.8, backend=backend).score(table)
        assert np.array_equal(fused["score"], separate["score"]), backend


def test_gradsimcore_ties_go_to_lower_sample_id() -> None:
    table = gradient_table(30, 2, epochs=(1,), seed=2)
    method = get_method("gradsimcore", threshold=1.0)  # nothing exceeds 1: all scores tie at 0
    scores = method.score(table)
    assert (scores["score"] == 0).all()
    assert method.select(scores, 0.2, seed=0, budget="global").tolist() == list(range(6))


@pytest.mark.parametrize("params", [{"threshold": 1.5}, {"threshold": -1.2}, {"threshold_quantile": 1.2},
                                    {"threshold": 0.5, "threshold_quantile": 0.5}])
def test_gradsimcore_bad_threshold(params: dict) -> None:
    with pytest.raises(ValueError):
        get_method("gradsimcore", **params)


def test_gradsimcore_missing_factors() -> None:
    with pytest.raises(ValueError, match="needs columns \\['err', 'emb'\\]"):
        get_method("gradsimcore").score(norm_table(np.ones(3)))


def test_every_method_describes_itself() -> None:
    """What the config, the score stage and the manifest read from each registered method."""
    import dataclasses
    import json

    from coreset.methods import Context, Inputs

    context = Context(final_epoch=5, factor_epochs=(1, 2), norm="l2_weights", seed=3)
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen, name
        method = cls.from_study(cls.Params(), context)
        assert method.name == name
        inputs = method.inputs()
        assert isinstance(inputs, Inputs) and set(inputs.epochs) <= {5, 1, 2}, name
        assert set(inputs.columns) <= {"l2_weights", "l2_last", "err", "emb", "correct", "perturbation"}, name
        assert inputs.table in ("gradients", "correctness", "perturbations"), name
        json.dumps(method.settings())  # recorded in scores/_manifest.json
    gsc = METHODS.get("gradsimcore").from_study(METHODS.get("gradsimcore").Params(), context)
    assert gsc.inputs() == Inputs(columns=("err", "emb"), epochs=(1, 2), by_class=True)
    assert gsc.settings()["epochs"] == [1, 2] and gsc.settings()["seed"] == 3
    mag = METHODS.get("max_gradient").from_study(None, context)
    assert mag.inputs() == Inputs(columns=("l2_weights",), epochs=(5,)) and mag.ranking == "l2_weights"
    assert METHODS.get("random").from_study(None, context).ranking is None
