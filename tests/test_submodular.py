"""The last-layer gradient methods (facility location, graph cut, log-determinant, CRAIG,
GRAD-MATCH) against plain references written here: explicit gradient vectors g = err ⊗ [h; 1],
similarities and objectives by loops, naive greedy (every gain recomputed as f(S ∪ x) − f(S))
and DeepCore's OMP on the explicit vectors."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_baselines import build, factor_table, rows_at

from coreset.config import load_config
from coreset.errors import ConfigError
from coreset.methods.base import Context
from coreset.methods.budget import class_budgets, global_budget
from coreset.methods.craig import subset_weights
from coreset.methods.greedy import greedy, lazy_greedy
from coreset.methods.last_layer import shifted_cosine
from coreset.methods.submodular import FacilityLocation, GraphCut, LogDeterminant


def explicit_gradients(group: pd.DataFrame) -> list[list[float]]:
    """g_i = err_i ⊗ [h_i; 1] written out, from the table's float32 factors."""
    out = []
    for err, emb in zip(group.err, group.emb, strict=True):
        h1 = [float(v) for v in emb] + [1.0]
        out.append([float(e) * h for e in err for h in h1])
    return out


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def reference_cosine(g: list[list[float]]) -> list[list[float]]:
    """½ + ½·cos(g_i, g_j), DeepCore's; a vector's cosine with itself is 1."""
    norms = [math.sqrt(dot(v, v)) for v in g]
    return [[1.0 if i == j else 0.5 + 0.5 * dot(g[i], g[j]) / (norms[i] * norms[j]) for j in range(len(g))]
            for i in range(len(g))]


def reference_craig_similarity(g: list[list[float]]) -> list[list[float]]:
    """max d − d + 10⁻³ of the Euclidean distances (squared distance clamped at 10⁻¹², as DeepCore)."""
    d = [[math.sqrt(max(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)), 1e-12)) for b in g] for a in g]
    top = max(max(row) for row in d)
    return [[top - v + 1e-3 for v in row] for row in d]


def facility_location(s: list[list[float]], chosen: list[int]) -> float:
    return sum(max((s[i][j] for j in chosen), default=0.0) for i in range(len(s)))


def graph_cut(s: list[list[float]], chosen: list[int], lam: float = 1.0) -> float:
    return lam * sum(s[i][j] for i in range(len(s)) for j in chosen) - sum(s[i][j] for i in chosen for j in chosen)


def log_det(s: list[list[float]], chosen: list[int]) -> float:
    if not chosen:
        return 0.0
    sign, value = np.linalg.slogdet(np.array([[s[i][j] for j in chosen] for i in chosen]))
    return value if sign > 0 else -math.inf


def naive_greedy(f, n: int) -> tuple[list[int], int]:
    """Every step recomputes every gain f(S ∪ {x}) − f(S); ties to the lower index. Also returns
    the first step whose best two gains differ by less than 10⁻⁹ but not by 0 (rounding of the
    differences of sums decides there; an exact tie, such as log-det's first step, goes to the
    lower index in both), n if none."""
    order: list[int] = []
    near_tie = n
    while len(order) < n:
        base = f(order)
        gains = {x: f(order + [x]) - base for x in range(n) if x not in order}
        ranked = sorted(gains, key=lambda x: (-gains[x], x))
        if len(ranked) > 1 and 0 < gains[ranked[0]] - gains[ranked[1]] <= 1e-9 and near_tie == n:
            near_tie = len(order)
        order.append(ranked[0])
    return order, near_tie


def check_greedy_path(f, got: list[int], want: list[int], near_tie: int) -> None:
    """The objective along the greedy path equals the naive greedy's; the picks are identical
    up to the naive greedy's first near-tie (facility location has exact ones: when only x and y
    still gain from each other, s_xy = s_yx makes their gains equal, and rounding picks)."""
    path = lambda order: [f(order[:t]) for t in range(1, len(order) + 1)]
    assert np.allclose(path(got), path(want), rtol=1e-9, atol=1e-9)
    assert got[:near_tie] == want[:near_tie]


def class_orders(scores: pd.DataFrame, rows: pd.DataFrame):
    """(class rows in sample_id order, the method's order of them as positions in that group)."""
    score = scores.set_index("sample_id").score
    for _, group in rows.groupby("label"):
        group = group.sort_values("sample_id")
        ranked = score.loc[group.sample_id].sort_values(ascending=False, kind="stable").index.tolist()
        position = {sid: i for i, sid in enumerate(group.sample_id)}
        yield group, [position[sid] for sid in ranked]


def check_prefix_selection(method, scores: pd.DataFrame, orders: dict[int, list[int]]) -> None:
    """Every fraction's class-balanced subset is the first k_c of each class's order (any seed)."""
    sizes = {c: len(o) for c, o in orders.items()}
    for fraction in (0.05, 0.2, 0.6):
        budgets = class_budgets(sizes, global_budget(len(scores), fraction))
        want = sorted(i for c, o in orders.items() for i in o[:budgets[c]])
        assert method.select(scores, fraction, seed=0).tolist() == want
        assert method.select(scores, fraction, seed=4).tolist() == want


OBJECTIVES = {"facility_location": facility_location, "graphcut": graph_cut, "log_determinant": log_det}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_submodular_methods_follow_naive_greedy_on_explicit_gradients(name: str) -> None:
    table = factor_table(64, 4, (1, 5), seed=11)  # n_c ≈ 16 < (C − 1)(D + 1) = 21: s has full rank
    method = build(name)
    assert method.inputs().columns == ("err", "emb") and method.inputs().epochs == (5,) and method.inputs().by_class
    scores = method.score(table)
    f = OBJECTIVES[name]
    orders = {}
    for group, got in class_orders(scores, rows_at(table, 5)):
        s = reference_cosine(explicit_gradients(group))
        objective = lambda chosen, s=s: f(s, chosen)
        want, near_tie = naive_greedy(objective, len(s))
        check_greedy_path(objective, got, want, near_tie)
        orders[int(group.label.iloc[0])] = group.sample_id.to_numpy()[got].tolist()
    check_prefix_selection(method, scores, orders)


def test_lazy_and_vector_greedy_agree_on_every_objective() -> None:
    """Both optimisers on all three objectives, including log-det past the similarity's rank (every
    gain −∞: the rest in index order)."""
    rng = np.random.default_rng(3)
    err = rng.standard_normal((120, 3))
    err -= err.mean(axis=1, keepdims=True)  # rows sum to 0, as softmax − onehot: rank ≤ 2·(D + 1) + 1 = 11
    emb = np.maximum(rng.standard_normal((120, 4)), 0)
    s = shifted_cosine((err @ err.T) * (emb @ emb.T + 1))
    for make in (lambda: FacilityLocation(s), lambda: GraphCut(s, 1.0), lambda: GraphCut(s, 2.5),
                 lambda: LogDeterminant(s)):
        lazy, vector = lazy_greedy(make(), len(s)), greedy(make(), len(s))
        assert lazy.tolist() == vector.tolist() and sorted(lazy.tolist()) == list(range(len(s)))
    tail = greedy(LogDeterminant(s), len(s))[20:]
    assert tail.tolist() == sorted(tail.tolist())


def reference_deepcore_logdet(s: list[list[float]]) -> list[int]:
    """DeepCore's LazyGreedy with its LogDeterminant gain s_xAᵀ pinv(s_A) s_xA, written out."""
    n = len(s)
    chosen: list[int] = []
    bound = [0.0] * n  # its gain from the empty set (an empty product)
    while len(chosen) < n:
        best, last = -math.inf, -1
        while True:
            top = max((x for x in range(n) if x not in chosen), key=lambda x: (bound[x], -x))
            if top == last:
                chosen.append(top)
                break
            a = np.array([[s[i][j] for j in chosen] for i in chosen]).reshape(len(chosen), len(chosen))
            v = np.array([s[top][j] for j in chosen])
            bound[top] = float(v @ np.linalg.pinv(a) @ v) if chosen else 0.0
            if bound[top] >= best:
                best, last = bound[top], top
    return chosen


def test_log_determinant_deepcore_variant_reproduces_its_index_order() -> None:
    table = factor_table(45, 3, (5,), seed=12)
    method = build("log_determinant", variant="deepcore")
    scores = method.score(table)
    for group, got in class_orders(scores, rows_at(table, 5)):
        assert got == reference_deepcore_logdet(reference_cosine(explicit_gradients(group))) == list(range(len(group)))


def reference_weights(s: list[list[float]], prefix: list[int]) -> dict[int, int]:
    """γ_j: the images whose most similar chosen image is j (a chosen image is its own; ties: earlier pick)."""
    weights = {j: 0 for j in prefix}
    for i in range(len(s)):
        nearest = i if i in prefix else max(prefix, key=lambda j: (s[i][j], -prefix.index(j)))
        weights[nearest] += 1
    return weights


def test_craig_is_facility_location_on_distances_with_cluster_weights() -> None:
    table = factor_table(60, 3, (1, 5), seed=13)
    method = build("craig")
    scores = method.score(table)
    assignment = method.analysis_tables()["craig_assignments"]
    orders, similarity = {}, {}
    for group, got in class_orders(scores, rows_at(table, 5)):
        s = reference_craig_similarity(explicit_gradients(group))
        objective = lambda chosen, s=s: facility_location(s, chosen)
        want, near_tie = naive_greedy(objective, len(s))
        check_greedy_path(objective, got, want, near_tie)
        c = int(group.label.iloc[0])
        orders[c], similarity[c] = group.sample_id.to_numpy()[got].tolist(), (group.sample_id.tolist(), s)
    check_prefix_selection(method, scores, orders)
    for fraction, budget in ((0.1, "class_balanced"), (0.4, "global")):
        subset = method.select(scores, fraction, seed=0, budget=budget)
        got = subset_weights(assignment, subset).set_index("sample_id").weight.to_dict()
        want = {}
        for c, (ids, s) in similarity.items():
            prefix = [ids.index(i) for i in orders[c] if i in set(subset.tolist())]
            want.update({ids[j]: w for j, w in reference_weights(s, prefix).items()})
        assert got == want, (fraction, budget)
    with pytest.raises(ValueError, match="not a prefix"):
        subset_weights(assignment, np.array(orders[0][1:3]))


def batch_mean_gradients(group: pd.DataFrame, selection_batch: int) -> list[list[float]]:
    """DeepCore's gradients of each batch's mean loss: g_i / |batch of i|, batches of the class in id order."""
    g = explicit_gradients(group)
    sizes = [min(selection_batch, len(g) - start) for start in range(0, len(g), selection_batch)]
    weights = [1.0 / size for size in sizes for _ in range(size)]
    return [[w * v for v in row] for w, row in zip(weights, g, strict=True)]


def reference_omp(a: np.ndarray, b: np.ndarray, lam: float, deepcore: bool) -> list[int]:
    """OMP on explicit vectors (columns of a) as DeepCore's ``orthogonal_matching_pursuit_np``:
    signed projections, ridge least squares (DeepCore: none at the first pick), every column."""
    n = a.shape[1]
    chosen: list[int] = []
    resid = b.copy()
    while len(chosen) < n:
        projections = a.T @ resid
        chosen.append(max((x for x in range(n) if x not in chosen), key=lambda x: (projections[x], -x)))
        picked = a[:, chosen]
        if deepcore and len(chosen) == 1:
            x = projections[chosen] / (picked[:, 0] @ picked[:, 0])
        else:
            x = np.linalg.solve(picked.T @ picked + lam * np.eye(len(chosen)), picked.T @ b)
        resid = b - picked @ x
    return chosen


@pytest.mark.parametrize(("variant", "lam"), [("paper", 1.0), ("deepcore", 1.0), ("paper", 0.3)])
def test_gradmatch_is_omp_on_explicit_gradients(variant: str, lam: float) -> None:
    table = factor_table(90, 2, (1, 5), seed=15)  # a table where the variants' second picks differ
    method = build("gradmatch", variant=variant, lam=lam)
    scores = method.score(table)
    orders = {}
    for group, got in class_orders(scores, rows_at(table, 5)):
        g = batch_mean_gradients(group, 256) if variant == "deepcore" else explicit_gradients(group)
        a = np.array(g).T  # (C·(D+1), n_c), DeepCore's design matrix
        assert got == reference_omp(a, a.mean(axis=1), lam, variant == "deepcore")
        orders[int(group.label.iloc[0])] = group.sample_id.to_numpy()[got].tolist()
    check_prefix_selection(method, scores, orders)


@pytest.mark.parametrize("fractions", [(0.05, 0.2), (0.33,), (0.5, 1.0)])
def test_gradmatch_stops_at_the_largest_budget_and_selects_the_same_subsets(fractions: tuple[float, ...]) -> None:
    """OMP stops once the largest configured fraction's budget is covered (⌈f·n_c⌉ + 1 picks; the
    rest score 0, unranked); every configured subset, class-balanced or global, is the full
    order's, for uneven classes too."""
    table = factor_table(70, 3, (1, 5), seed=21)
    table = table[~((table.label == 2) & (table.sample_id % 3 == 0))]  # a smaller class
    context = Context(final_epoch=5, factor_epochs=(1, 5), norm="l2_last", seed=0, fractions=fractions)
    stopped, full = build("gradmatch", context), build("gradmatch")
    assert stopped.max_fraction == max(fractions) and "max_fraction" in stopped.settings()
    cut, whole = stopped.score(table), full.score(table)
    for _, group in cut.groupby("label"):
        n = len(group)
        assert (group.score > 0).sum() == min(n, math.ceil(max(fractions) * n) + 1)
    ranked = cut.score > 0
    assert np.allclose(cut.score[ranked], whole.score[ranked])  # the same prefix, picked in the same order
    for fraction in fractions:
        for budget in ("class_balanced", "global"):
            assert np.array_equal(stopped.select(cut, fraction, 0, budget), full.select(whole, fraction, 0, budget))


def test_deepcore_variants_of_craig_and_gradmatch_take_gradients_of_the_batch_mean_loss() -> None:
    table = factor_table(45, 2, (1, 5), seed=17)  # classes of ~22 images: batches of 8, 8 and a short one
    craig = build("craig", variant="deepcore", selection_batch=8)
    gradmatch = build("gradmatch", variant="deepcore", selection_batch=8)
    craig_scores, gradmatch_scores = craig.score(table), gradmatch.score(table)
    assert not craig_scores.equals(build("craig").score(table))  # the short batch moves picks
    for group, got in class_orders(craig_scores, rows_at(table, 5)):
        s = reference_craig_similarity(batch_mean_gradients(group, 8))
        objective = lambda chosen, s=s: facility_location(s, chosen)
        want, near_tie = naive_greedy(objective, len(s))
        check_greedy_path(objective, got, want, near_tie)
    for group, got in class_orders(gradmatch_scores, rows_at(table, 5)):
        a = np.array(batch_mean_gradients(group, 8)).T
        assert got == reference_omp(a, a.mean(axis=1), 1.0, deepcore=True)
    assert craig.settings() == {"epoch": 5, "variant": "deepcore", "selection_batch": 8}
    with pytest.raises(ConfigError, match="score.params.craig.selection_batch must be >= 1"):
        load_config(None, ["score.methods=[craig]", "score.params.craig.selection_batch=0"])


def test_variants_differ_and_bad_params_are_config_errors() -> None:
    table = factor_table(90, 2, (1, 5), seed=15)
    paper, deepcore = build("gradmatch").score(table), build("gradmatch", variant="deepcore").score(table)
    assert not paper.equals(deepcore)  # on most tables the two agree
    assert build("graphcut", lam=3.0).settings() == {"epoch": 5, "lam": 3.0}
    with pytest.raises(ConfigError, match="score.params.graphcut.lam must be >= 0.0"):
        load_config(None, ["score.methods=[graphcut]", "score.params.graphcut.lam=-1"])
    with pytest.raises(ConfigError, match="variant='x' is not allowed"):
        load_config(None, ["score.methods=[log_determinant]", "score.params.log_determinant.variant=x"])


def test_on_real_mnist_rows(mnist_rows) -> None:
    """Real MNIST images (7x7 pooled pixels as h; err from a fixed random linear classifier on
    them): facility location, graph cut and log-det follow naive greedy, GRAD-MATCH is OMP."""
    emb, labels = mnist_rows
    keep = np.concatenate([np.flatnonzero(labels == c)[:18] for c in range(3)])
    emb, labels = emb[keep], labels[keep]
    z = emb @ np.random.default_rng(16).standard_normal((emb.shape[1], 3)) * 2
    err = np.exp(z - z.max(1, keepdims=True))
    err /= err.sum(1, keepdims=True)
    err[np.arange(len(err)), labels] -= 1
    table = pd.DataFrame({"sample_id": np.arange(len(emb)) * 5 + 1, "label": labels, "epoch": 5,
                          "err": list(err.astype(np.float32)), "emb": list(emb.astype(np.float32))})
    for name, f in OBJECTIVES.items():
        for group, got in class_orders(build(name).score(table), table):
            s = reference_cosine(explicit_gradients(group))
            objective = lambda chosen, f=f, s=s: f(s, chosen)
            want, near_tie = naive_greedy(objective, len(group))
            check_greedy_path(objective, got, want, near_tie)
    for group, got in class_orders(build("gradmatch").score(table), table):
        a = np.array(explicit_gradients(group)).T
        assert got == reference_omp(a, a.mean(axis=1), 1.0, False)
