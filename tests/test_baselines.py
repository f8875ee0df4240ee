"""Issue 12's baselines against plain reference implementations (explicit loops) written here,
on small random tables and on real MNIST rows; budgets, ties, variants and config errors."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from coreset.config import load_config
from coreset.errors import ConfigError
from coreset.methods import METHODS, Context
from coreset.methods.budget import class_budgets, global_budget

CONTEXT = Context(final_epoch=5, factor_epochs=(1, 2, 3), norm="l2_last", seed=0)


def factor_table(n: int, n_classes: int, epochs: tuple[int, ...], seed: int, dim: int = 6) -> pd.DataFrame:
    """Rows with the gradient table's columns: err = softmax(z) − onehot(y) of random logits,
    emb ≥ 0, and l2_last/l2_all as the engine writes them (l2_all only at the last epoch)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    frames = []
    for epoch in epochs:
        z = rng.standard_normal((n, n_classes)) * 3
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        err = p.copy()
        err[np.arange(n), labels] -= 1
        emb = np.maximum(rng.standard_normal((n, dim)), 0)
        l2_last = np.linalg.norm(err, axis=1) * np.sqrt((emb**2).sum(1) + 1)
        frames.append(pd.DataFrame({"sample_id": np.arange(n), "label": labels, "epoch": epoch,
                                    "err": list(err.astype(np.float32)), "emb": list(emb.astype(np.float32)),
                                    "l2_last": l2_last,
                                    "l2_all": l2_last * 2 + rng.random(n) if epoch == max(epochs) else np.nan}))
    return pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed)  # files are in no order


def rows_at(table: pd.DataFrame, epoch: int) -> pd.DataFrame:
    return table[table.epoch == epoch].sort_values("sample_id").reset_index(drop=True)


def build(name: str, context: Context = CONTEXT, **params: object):
    cls = METHODS.get(name)
    return cls.from_study(cls.Params(**params), context)


def reference_top(scores: dict[int, float], labels: dict[int, int], fraction: float, balanced: bool) -> list[int]:
    """The k highest scores (ties: lower id), globally or per class with Hamilton budgets."""
    ids = sorted(scores)
    k = global_budget(len(ids), fraction)
    if not balanced:
        return sorted(sorted(ids, key=lambda i: (-scores[i], i))[:k])
    sizes = {}
    for i in ids:
        sizes[labels[i]] = sizes.get(labels[i], 0) + 1
    chosen = []
    for c, k_c in class_budgets(sizes, k).items():
        pool = [i for i in ids if labels[i] == c]
        chosen += sorted(pool, key=lambda i: (-scores[i], i))[:k_c]
    return sorted(chosen)


# --------------------------------------------------------------------------- uncertainty, EL2N, GraNd

def reference_uncertainty(kind: str, err: list[float], label: int) -> float:
    p = [e + (1.0 if c == label else 0.0) for c, e in enumerate(err)]
    if kind == "uncertainty_least_confidence":
        return 1.0 - max(p)
    if kind == "uncertainty_entropy":
        return -sum(q * math.log(q) for q in p if q > 0)
    first, second = sorted(p, reverse=True)[:2]
    return 1.0 - (first - second)


@pytest.mark.parametrize("name", ["uncertainty_least_confidence", "uncertainty_entropy", "uncertainty_margin"])
def test_uncertainty_matches_reference_at_its_early_checkpoint(name: str) -> None:
    table = factor_table(120, 5, (1, 2, 3, 5), seed=1)
    method = build(name, epoch=2)
    assert method.inputs().columns == ("err",) and method.inputs().epochs == (2,)
    scores = method.score(table)
    rows = rows_at(table, 2)
    want = {int(r.sample_id): reference_uncertainty(name, [float(v) for v in r.err], int(r.label))
            for r in rows.itertuples()}
    assert np.allclose(scores.score, [want[i] for i in scores.sample_id], atol=1e-6)
    labels = dict(zip(rows.sample_id, rows.label, strict=True))
    for fraction in (0.05, 0.3):
        got = method.select(scores, fraction, seed=0).tolist()  # default: class-balanced, as DeepCore
        assert got == reference_top(dict(zip(scores.sample_id, scores.score, strict=True)), labels, fraction, True)
        assert got == method.select(scores, fraction, seed=9).tolist()  # deterministic


def test_uncertainty_default_checkpoint_and_deepcore_variant() -> None:
    table = factor_table(60, 3, (1, 2, 3, 5), seed=2)
    assert build("uncertainty_entropy").inputs().epochs == (3,)  # the latest early checkpoint
    paper, deepcore = build("uncertainty_margin"), build("uncertainty_margin", variant="deepcore")
    scores = paper.score(table)
    assert scores.equals(deepcore.score(table))
    balanced = paper.select(scores, 0.2, 0)
    assert np.array_equal(balanced, deepcore.select(scores, 0.2, 0))
    most_uncertain = paper.select(scores, 0.2, 0, budget="global")
    most_confident = deepcore.select(scores, 0.2, 0, budget="global")  # DeepCore's unbalanced branch
    assert scores.set_index("sample_id").score.loc[most_confident].max() \
        <= scores.set_index("sample_id").score.loc[most_uncertain].min()


def test_el2n_and_grand_match_explicit_gradients() -> None:
    table = factor_table(80, 4, (1, 2, 3, 5), seed=3)
    rows = rows_at(table, 1)
    el2n = build("el2n", epoch=1).score(table)
    assert np.allclose(el2n.score, [math.sqrt(sum(float(e) ** 2 for e in r.err)) for r in rows.itertuples()],
                       rtol=1e-6)
    grand = build("grand", epoch=1)
    assert grand.inputs().columns == ("l2_last",)
    scores = grand.score(table)
    for r, got in zip(rows.itertuples(), scores.score, strict=True):  # ‖err ⊗ [h; 1]‖, materialised
        g = np.outer(np.asarray(r.err, np.float64), np.append(np.asarray(r.emb, np.float64), 1.0))
        assert got == pytest.approx(np.linalg.norm(g), rel=1e-6)
    labels = dict(zip(rows.sample_id, rows.label, strict=True))
    s = dict(zip(scores.sample_id, scores.score, strict=True))
    assert grand.select(scores, 0.25, 0).tolist() == reference_top(s, labels, 0.25, True)
    e = dict(zip(el2n.sample_id, el2n.score, strict=True))
    assert build("el2n", epoch=1).select(el2n, 0.25, 0).tolist() == reference_top(e, labels, 0.25, False)
    every = build("grand", gradient="all")
    assert every.inputs().columns == ("l2_all",) and every.inputs().epochs == (5,)
    assert np.allclose(every.score(table).score, rows_at(table, 5).l2_all)


def test_grand_all_parameters_only_at_the_trained_model() -> None:
    table = factor_table(20, 2, (1, 5), seed=4)
    with pytest.raises(ValueError, match="l2_all is null"):
        METHODS.get("grand")(epoch=1, gradient="all").score(table)


@pytest.mark.parametrize(("override", "message"), [
    ("score.params.el2n.epoch=4", r"score.params.el2n.epoch=4 is not a checkpoint the gradient stage writes"),
    ("score.params.grand.gradient=middle", r"score.params.grand.gradient='middle' is not allowed"),
    ("score.params.grand.epoch=1", r"epoch applies to gradient=last"),
    ("score.params.uncertainty_margin.variant=x", r"variant='x' is not allowed"),
])
def test_bad_params_are_one_line_config_errors(override: str, message: str) -> None:
    extra = ["score.params.grand.gradient=all"] if override.endswith("epoch=1") else []
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, ["score.methods=[el2n, grand, uncertainty_margin]", "gradients.factor_epochs=[1, 2]",
                           override, *extra])
    assert "\n" not in str(info.value)
