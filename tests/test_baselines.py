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


# --------------------------------------------------------------------------- embedding methods

def embedding_table(emb: np.ndarray, labels: np.ndarray, epoch: int = 5, seed: int = 0) -> pd.DataFrame:
    ids = np.arange(len(emb)) * 3 + 7  # ids that are not row numbers
    return pd.DataFrame({"sample_id": ids, "label": labels, "epoch": epoch,
                         "emb": list(emb.astype(np.float32))}).sample(frac=1.0, random_state=seed)


def random_rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.standard_normal((90, 5)), rng.integers(0, 3, 90)


def per_class(emb: np.ndarray, labels: np.ndarray, table: pd.DataFrame):
    """(class ids in sample_id order, their features as float64 after the table's float32 storage)."""
    rows = table.sort_values("sample_id")
    for c in sorted(set(labels.tolist())):
        group = rows[rows.label == c]
        yield group.sample_id.to_numpy(), np.stack(group.emb.to_list()).astype(np.float64)


def reference_herding(x: np.ndarray, deepcore: bool = False) -> list[int]:
    """Herding with explicit loops: argmin (or DeepCore's argmax) of ‖μ − mean(S ∪ {x})‖."""
    n, d = x.shape
    mu = [sum(x[i][j] for i in range(n)) / n for j in range(d)]
    order: list[int] = []
    for t in range(1, n + 1):
        best, best_d = -1, None
        for i in range(n):
            if i in order:
                continue
            mean = [(sum(x[s][j] for s in order) + x[i][j]) / t for j in range(d)]
            dist = math.sqrt(sum((mu[j] - mean[j]) ** 2 for j in range(d)))
            if best_d is None or (dist > best_d if deepcore else dist < best_d):
                best, best_d = i, dist
        order.append(best)
    return order


def reference_kcenter(x: np.ndarray) -> list[int]:
    """k-Center Greedy with explicit loops, from the point nearest the mean."""
    n, d = x.shape
    mu = [sum(x[i][j] for i in range(n)) / n for j in range(d)]
    dist = lambda a, b: math.sqrt(sum((a[j] - b[j]) ** 2 for j in range(d)))
    order = [min(range(n), key=lambda i: (dist(x[i], mu), i))]
    while len(order) < n:
        far = max((i for i in range(n) if i not in order), key=lambda i: (min(dist(x[i], x[c]) for c in order), -i))
        order.append(far)
    return order


def reference_moderate(x: np.ndarray) -> list[float]:
    n, d = x.shape
    median = []
    for j in range(d):
        col = sorted(x[i][j] for i in range(n))
        median.append(col[n // 2] if n % 2 else (col[n // 2 - 1] + col[n // 2]) / 2)
    return [math.sqrt(sum((x[i][j] - median[j]) ** 2 for j in range(d))) for i in range(n)]


def check_greedy(name: str, reference, emb: np.ndarray, labels: np.ndarray, **params: object) -> None:
    table = embedding_table(emb, labels)
    method = build(name, **params)
    assert method.inputs().columns == ("emb",) and method.inputs().by_class and method.inputs().epochs == (5,)
    scores = method.score(table).set_index("sample_id")
    orders = {}
    for ids, x in per_class(emb, labels, table):
        orders[int(scores.label.loc[ids[0]])] = [int(ids[i]) for i in reference(x)]
        got = scores.score.loc[ids].sort_values(ascending=False, kind="stable").index.tolist()
        assert got == orders[int(scores.label.loc[ids[0]])], name
    frame = scores.reset_index()
    sizes = {c: len(o) for c, o in orders.items()}
    for fraction in (0.02, 0.1, 0.5):
        budgets = class_budgets(sizes, global_budget(len(frame), fraction))
        want = sorted(i for c, o in orders.items() for i in o[:budgets[c]])
        assert method.select(frame, fraction, seed=0).tolist() == want
        assert method.select(frame, fraction, seed=3).tolist() == want  # deterministic


@pytest.mark.parametrize("variant", ["paper", "deepcore"])
def test_herding_matches_reference_loops(variant: str) -> None:
    emb, labels = random_rows()
    check_greedy("herding", lambda x: reference_herding(x, variant == "deepcore"), emb, labels, variant=variant)


def test_kcenter_greedy_matches_reference_loops() -> None:
    emb, labels = random_rows()
    check_greedy("kcenter_greedy", reference_kcenter, emb, labels)


def test_greedy_methods_on_real_mnist_rows(mnist_rows) -> None:
    emb, labels = mnist_rows
    small = np.flatnonzero(np.arange(len(labels)) < 60)  # the reference loops are cubic
    check_greedy("herding", reference_herding, emb[small], labels[small])
    check_greedy("kcenter_greedy", reference_kcenter, emb[small], labels[small])


def test_kcenter_memory_is_linear_in_n() -> None:
    """The greedy loop keeps (n,) state: 200k x 64 float32 (51 MB) for 30 centres stays far below
    the n x k float64 matrix DeepCore allocates (or any n x n one)."""
    import tracemalloc

    from coreset.methods.geometry import kcenter_greedy_order

    x = np.random.default_rng(0).standard_normal((200_000, 64), dtype=np.float32)
    tracemalloc.start()
    order = kcenter_greedy_order(x, first=0, k=30)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(set(order.tolist())) == 30 and peak < 8 * 200_000 * 4  # a few (n,) vectors


@pytest.mark.parametrize("rows", ["random", "mnist"])
def test_moderate_is_the_window_around_the_median_distance(rows: str, request) -> None:
    emb, labels = random_rows() if rows == "random" else request.getfixturevalue("mnist_rows")
    table = embedding_table(emb, labels)
    method = build("moderate")
    scores = method.score(table)
    distance = {}
    for ids, x in per_class(emb, labels, table):
        distance.update(zip(ids.tolist(), reference_moderate(x), strict=True))
    assert np.allclose(scores.score, [distance[i] for i in scores.sample_id], rtol=1e-9)
    label_of = dict(zip(scores.sample_id, scores.label, strict=True))
    for fraction, budget in ((0.1, "global"), (0.3, "global"), (0.3, "class_balanced")):
        got = method.select(scores, fraction, seed=0, budget=budget).tolist()
        pools = [sorted(distance)] if budget == "global" else \
            [[i for i in sorted(distance) if label_of[i] == c] for c in sorted(set(label_of.values()))]
        k = global_budget(len(distance), fraction)
        ks = [k] if budget == "global" else list(class_budgets({c: len(p) for c, p in enumerate(pools)}, k).values())
        want = []
        for pool, k_p in zip(pools, ks, strict=True):
            ascending = sorted(pool, key=lambda i: (distance[i], i))
            low = math.floor(0.5 * (len(pool) - k_p) + 0.5)
            want += ascending[low:low + k_p]
        assert got == sorted(want), (fraction, budget)


# --------------------------------------------------------------------------- CCS

def test_ccs_prunes_the_hardest_and_draws_strata_smallest_first() -> None:
    rng = np.random.default_rng(5)
    n, k, beta, n_strata = 400, 60, 0.1, 8
    difficulty = np.concatenate([rng.random(300), 1 + rng.random(100) * 0.1])  # crowded hard end
    scores = pd.DataFrame({"sample_id": np.arange(n), "label": np.zeros(n, np.int64), "score": difficulty})
    method = METHODS.get("ccs")(METHODS.get("el2n")(epoch=1), beta=beta, strata=n_strata)
    # Reference, with loops: prune, equal-width intervals, budgets smallest stratum first.
    hardest = sorted(range(n), key=lambda i: (-difficulty[i], i))[:round(beta * n)]
    kept = [i for i in range(n) if i not in hardest]
    lo, hi = min(difficulty[kept]), max(difficulty[kept])
    stratum = {i: min(int((difficulty[i] - lo) / (hi - lo) * n_strata), n_strata - 1) for i in kept}
    members = {b: [i for i in kept if stratum[i] == b] for b in sorted(set(stratum.values()))}
    want, left = {}, k
    for pos, b in enumerate(sorted(members, key=lambda b: (len(members[b]), b))):
        want[b] = min(len(members[b]), left // (len(members) - pos))
        left -= want[b]
    draws = []
    for seed in range(3):
        got = method.select(scores, k / n, seed=seed)
        assert len(got) == k and not set(got.tolist()) & set(hardest)
        counts = {b: sum(stratum[i] == b for i in got.tolist()) for b in members}
        assert counts == want
        draws.append(got.tolist())
    assert draws[0] != draws[1]  # random within strata, seeded
    assert np.array_equal(method.select(scores, k / n, seed=1), method.select(scores, k / n, seed=1))
    everything = method.select(scores, 0.95, seed=0)  # more than the kept images: the least hard pruned fill
    assert set(everything.tolist()) == set(kept) | set(hardest[::-1][:380 - len(kept)])


def test_ccs_reads_its_difficulty_method() -> None:
    ccs = build("ccs", difficulty="kcenter_greedy", beta=0.0)
    assert ccs.inputs() == build("kcenter_greedy").inputs() and ccs.ranking == "kcenter_greedy"
    assert ccs.settings()["difficulty_settings"] == {"epoch": 5}
    with pytest.raises(ConfigError, match="score.params.ccs.difficulty='random' is not allowed"):
        load_config(None, ["score.methods=[ccs]", "score.params.ccs.difficulty=random"])
    with pytest.raises(ConfigError, match=r"score.params.ccs.beta must lie in \[0.0, 1.0\)"):
        load_config(None, ["score.methods=[ccs]", "score.params.ccs.beta=1"])


def reference_contextual_diversity(p: np.ndarray) -> list[int]:
    """k-Center Greedy with explicit loops under ½KL(p‖q) + ½KL(q‖p), from the row nearest the mean."""
    n, c = p.shape
    skl = lambda a, b: sum(0.5 * a[j] * math.log(a[j] / b[j]) + 0.5 * b[j] * math.log(b[j] / a[j])
                           for j in range(c))
    mean = [sum(p[i][j] for i in range(n)) / n for j in range(c)]
    order = [min(range(n), key=lambda i: (skl(p[i], mean), i))]
    while len(order) < n:
        order.append(max((i for i in range(n) if i not in order),
                         key=lambda i: (min(skl(p[i], p[s]) for s in order), -i)))
    return order


def test_contextual_diversity_matches_reference_loops() -> None:
    from coreset.methods.geometry import PROBABILITY_FLOOR

    table = factor_table(70, 4, (1, 5), seed=6)
    method = build("contextual_diversity")
    assert method.inputs().columns == ("err",) and method.inputs().epochs == (5,) and method.inputs().by_class
    scores = method.score(table).set_index("sample_id")
    rows = rows_at(table, 5)
    for c, group in rows.groupby("label"):
        p = np.stack(group.err.to_list()).astype(np.float64)
        p[np.arange(len(p)), c] += 1
        p = np.maximum(np.clip(p, 0, 1), PROBABILITY_FLOOR)
        want = [int(group.sample_id.iloc[i]) for i in reference_contextual_diversity(p)]
        assert scores.score.loc[group.sample_id].sort_values(ascending=False, kind="stable").index.tolist() == want
    frame = scores.reset_index()
    assert np.array_equal(method.select(frame, 0.2, 0), method.select(frame, 0.2, 1))


# --------------------------------------------------------------------------- Forgetting

def reference_forgetting(history: dict[int, list[bool]], n_epochs: int, deepcore: bool) -> dict[int, float]:
    """Toneva et al.'s count with an explicit loop over each image's presentations."""
    scores = {}
    for i, seq in history.items():
        events, previous = 0, False if deepcore else None
        for correct in seq:
            if previous and not correct:
                events += 1
            previous = correct
        scores[i] = float(events if deepcore or any(seq) else n_epochs)
    return scores


@pytest.mark.parametrize("variant", ["paper", "deepcore"])
def test_forgetting_counts_events_like_the_reference(variant: str) -> None:
    rng = np.random.default_rng(8)
    n, n_epochs = 150, 6
    labels = rng.integers(0, 3, n)
    learn = rng.random(n)
    frames = []
    for epoch in range(1, n_epochs + 1):
        shown = rng.random(n) > 0.1  # as under DDP, an epoch may leave an image out
        frames.append(pd.DataFrame({"sample_id": np.flatnonzero(shown) * 2, "label": labels[shown], "epoch": epoch,
                                    "correct": rng.random(shown.sum()) < learn[shown] * epoch / n_epochs}))
    table = pd.concat(frames).sample(frac=1.0, random_state=1)
    history: dict[int, list[bool]] = {}
    for r in table.sort_values("epoch").itertuples():
        history.setdefault(int(r.sample_id), []).append(bool(r.correct))
    method = build("forgetting", variant=variant)
    assert method.inputs().table == "correctness"
    scores = method.score(table)
    want = reference_forgetting(history, n_epochs, variant == "deepcore")
    assert scores.score.tolist() == [want[i] for i in scores.sample_id]
    assert (scores.score == n_epochs).any() == (variant == "paper")
    label_of = dict(zip(scores.sample_id, scores.label, strict=True))
    assert method.select(scores, 0.2, seed=0).tolist() == reference_top(want, label_of, 0.2, True)


# --------------------------------------------------------------------------- CAL

def reference_cal(emb: np.ndarray, p: np.ndarray, k: int, symmetric: bool) -> list[float]:
    """DeepCore's rule with loops: each row's k nearest other rows by Euclidean distance (sorted
    distances, itself first), and the mean divergence of their probabilities from its own."""
    scores = []
    for i in range(len(emb)):
        d = [math.dist(emb[i], emb[j]) for j in range(len(emb))]
        near = [j for j in sorted(range(len(emb)), key=lambda j: d[j]) if j != i][:k]
        total = 0.0
        for j in near:
            kl_j_i = sum(p[j][c] * math.log(p[j][c] / p[i][c]) for c in range(len(p[i])))
            kl_i_j = sum(p[i][c] * math.log(p[i][c] / p[j][c]) for c in range(len(p[i])))
            total += 0.5 * (kl_i_j + kl_j_i) if symmetric else kl_j_i
        scores.append(total / len(near))
    return scores


@pytest.mark.parametrize("variant", ["paper", "deepcore"])
def test_cal_matches_reference_loops(variant: str) -> None:
    from coreset.methods.geometry import PROBABILITY_FLOOR

    table = factor_table(80, 3, (1, 5), seed=9)
    method = build("cal", variant=variant, neighbors=4)
    assert set(method.inputs().columns) == {"emb", "err"} and method.inputs().by_class
    scores = method.score(table).set_index("sample_id")
    for c, group in rows_at(table, 5).sort_values("sample_id").groupby("label"):
        emb = np.stack(group.emb.to_list()).astype(np.float64)
        p = np.stack(group.err.to_list()).astype(np.float64)
        p[np.arange(len(p)), c] += 1
        p = np.maximum(np.clip(p, 0, 1), PROBABILITY_FLOOR)
        want = reference_cal(emb, p, 4, symmetric=variant == "deepcore")
        sign = -1.0 if variant == "deepcore" else 1.0
        assert np.allclose(scores.score.loc[group.sample_id].to_numpy(), sign * np.array(want), rtol=1e-9)
    frame = scores.reset_index()
    label_of = dict(zip(frame.sample_id, frame.label, strict=True))
    got = dict(zip(frame.sample_id, frame.score, strict=True))
    assert method.select(frame, 0.25, seed=0).tolist() == reference_top(got, label_of, 0.25, True)


def test_cal_on_real_mnist_rows_keeps_the_self_out_of_its_neighbours(mnist_rows) -> None:
    emb, labels = mnist_rows
    emb = np.concatenate([emb, emb[:5]])  # exact duplicates: a row's nearest may be its twin, not itself
    labels = np.concatenate([labels, labels[:5]])
    z = emb @ np.random.default_rng(3).standard_normal((emb.shape[1], 3)) * 3
    err = np.exp(z - z.max(1, keepdims=True))
    err /= err.sum(1, keepdims=True)
    err[np.arange(len(err)), labels] -= 1
    table = pd.DataFrame({"sample_id": np.arange(len(emb)), "label": labels, "epoch": 5,
                          "err": list(err.astype(np.float32)), "emb": list(emb.astype(np.float32))})
    from coreset.methods.cal import nearest_neighbours

    for _, group in table.groupby("label"):
        x = np.stack(group.emb.to_list()).astype(np.float64)
        found = nearest_neighbours(x, 10)
        assert found.shape == (len(x), 10) and not (found == np.arange(len(x))[:, None]).any()
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        kth = np.sort(d, axis=1)[:, 9]
        assert np.allclose(np.take_along_axis(d, found, axis=1).max(axis=1), kth, rtol=1e-5, atol=1e-6)
    scores = build("cal").score(table)
    assert scores.score.notna().all() and (scores.score >= 0).all() and scores.score.gt(0).any()


def test_cal_neighbours_outside_deepcores_bound_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"score.params.cal.neighbors must lie in \(0, 100\)"):
        load_config(None, ["score.methods=[cal]", "score.params.cal.neighbors=100"])
