"""GLISTER and DeepFool (issue 12's last two DeepCore baselines) against plain reference
implementations written here (explicit C·(D+1)-wide gradient vectors, per-image loops), on small
random data and real MNIST rows; their variants, budgets and config errors; the gradient stage's
validation and perturbation tables (written only when asked, resumed file by file, counted by
the plan); and both methods through the score stage on a synthetic study."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from studies import copy_root, synthetic_study
from torch import nn

from coreset import layout, placement
from coreset.config import load_config
from coreset.data import load_datasets
from coreset.errors import ConfigError, StageError
from coreset.gradients.deepfool import deepfool
from coreset.methods import METHODS, Context
from coreset.methods.budget import class_budgets, global_budget
from coreset.methods.geometry import PROBABILITY_FLOOR
from coreset.models.base import Classifier, InputSpec
from coreset.planning import Counts, plan_study
from coreset.stages import gradients, score
from coreset.stages.train import load_source_model, train_source
from coreset.storage import StudyRoot

CONTEXT = Context(final_epoch=5, factor_epochs=(1, 2), norm="l2_last", seed=0, fractions=(1.0,), lr=0.1)


def build(name: str, context: Context = CONTEXT, **params: object):
    cls = METHODS.get(name)
    return cls.from_study(cls.Params(**params), context)


def factors(n: int, n_classes: int, labels: np.ndarray, dim: int, rng: np.random.Generator,
            emb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """err = softmax(z) − onehot(y) of random logits and emb ≥ 0 (or the given features)."""
    z = rng.standard_normal((n, n_classes)) * 2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(n), labels] -= 1
    return p, np.maximum(rng.standard_normal((n, dim)), 0) if emb is None else emb


def glister_table(n_train: int, n_val: int, n_classes: int, dim: int, seed: int,
                  emb: np.ndarray | None = None, labels: np.ndarray | None = None) -> pd.DataFrame:
    """Train and validation rows as the score stage hands them to GLISTER (``split`` column),
    float32 factors, in no particular order."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    labels = rng.integers(0, n_classes, n) if labels is None else labels
    err, emb = factors(n, n_classes, labels, dim, rng, emb)
    split = np.array(["train"] * n_train + ["val"] * n_val)
    return pd.DataFrame({"sample_id": rng.permutation(n) * 2 + 1, "label": labels, "epoch": 5, "split": split,
                         "err": list(err.astype(np.float32)), "emb": list(emb.astype(np.float32))}
                        ).sample(frac=1.0, random_state=seed)


def class_arrays(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = rows.sort_values("sample_id")
    return (rows.sample_id.to_numpy(), np.stack(rows.err.to_list()).astype(np.float64),
            np.stack(rows.emb.to_list()).astype(np.float64))


def gradient_vector(err: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """The last layer's (W, b) gradient err ⊗ [h; 1], materialised: C·(D+1) values."""
    return np.outer(err, np.append(emb, 1.0)).ravel()


def reference_glister(err_t, emb_t, err_v, emb_v, label: int, eta: float, steps: int) -> list[int]:
    """GLISTER-ONLINE with explicit vectors: the last layer displaced by Δ = −η Σ_S g_j, every
    validation image's logits recomputed from Δ, its softmax and its gradient, each step."""
    n, (m, c) = len(err_t), err_v.shape
    g = [gradient_vector(err_t[i], emb_t[i]) for i in range(n)]
    logits0 = [[math.log(max(err_v[v][k] + (k == label), PROBABILITY_FLOOR)) for k in range(c)] for v in range(m)]
    delta = np.zeros(len(g[0]))
    order: list[int] = []
    for _ in range(steps):
        val_grad = np.zeros(len(g[0]))
        for v in range(m):
            x = np.append(emb_v[v], 1.0)
            logits = [logits0[v][k] + float(delta[k * len(x):(k + 1) * len(x)] @ x) for k in range(c)]
            top = max(logits)
            p = [math.exp(z - top) for z in logits]
            e = [q / sum(p) - (k == label) for k, q in enumerate(p)]
            val_grad += np.outer(e, x).ravel() / m
        best = max((i for i in range(n) if i not in order), key=lambda i: (float(g[i] @ val_grad), -i))
        order.append(best)
        delta -= eta * g[best]
    return order


def reference_deepcore_glister(err_t, emb_t, batch: int) -> list[float]:
    """DeepCore's gains, literally: each batch of ``batch`` rows differentiates its mean loss, so
    g_i = err_i ⊗ [h_i; 1] / |batch|; gain_i = ⟨g_i, mean_j g_j⟩ (no update)."""
    n = len(err_t)
    g = []
    for start in range(0, n, batch):
        rows = range(start, min(start + batch, n))
        g += [gradient_vector(err_t[i], emb_t[i]) / len(rows) for i in rows]
    target = sum(g) / n
    return [float(gi @ target) for gi in g]


@pytest.mark.parametrize("n_val", [5, 24])  # the gain product through K (m < D + 1) and through [H; 1] (m > D + 1)
def test_glister_matches_the_explicit_vector_reference(n_val: int) -> None:
    table = glister_table(90, n_val * 3, 3, dim=6, seed=n_val)
    method = build("glister", eta=0.1)
    inputs = method.inputs()
    assert inputs.validation and inputs.by_class and inputs.columns == ("err", "emb") and inputs.epochs == (5,)
    scores = method.score(table).set_index("sample_id")
    train, val = table[table.split == "train"], table[table.split == "val"]
    assert sorted(scores.index) == sorted(train.sample_id)
    orders = {}
    for c in range(3):
        ids, err_t, emb_t = class_arrays(train[train.label == c])
        _, err_v, emb_v = class_arrays(val[val.label == c])
        orders[c] = [int(ids[i]) for i in reference_glister(err_t, emb_t, err_v, emb_v, c, 0.1, len(ids))]
        got = scores.score.loc[ids].sort_values(ascending=False, kind="stable").index.tolist()
        assert got == orders[c], c
    frame = scores.reset_index()
    for fraction in (0.05, 0.3):
        budgets = class_budgets({c: len(o) for c, o in orders.items()}, global_budget(len(frame), fraction))
        want = sorted(i for c, o in orders.items() for i in o[:budgets[c]])
        assert method.select(frame, fraction, seed=0).tolist() == want  # default: class-balanced, as DeepCore
        assert method.select(frame, fraction, seed=4).tolist() == want  # deterministic


def test_glister_on_real_mnist_rows_stops_at_the_largest_fraction(mnist_rows) -> None:
    emb, labels = mnist_rows
    table = glister_table(200, 40, 3, dim=49, seed=3, emb=emb, labels=labels)
    context = Context(final_epoch=5, factor_epochs=(), norm="l2_last", seed=0, fractions=(0.05, 0.2), lr=0.1)
    method = build("glister", context)
    assert method.eta == 0.1 and method.max_fraction == 0.2  # η = train.lr, as DeepCore's eta = args.lr
    scores = method.score(table).set_index("sample_id")
    full = build("glister").score(table).set_index("sample_id")
    train, val = table[table.split == "train"], table[table.split == "val"]
    for c in range(3):
        ids, err_t, emb_t = class_arrays(train[train.label == c])
        _, err_v, emb_v = class_arrays(val[val.label == c])
        steps = math.ceil(0.2 * len(ids)) + 1
        want = [int(ids[i]) for i in reference_glister(err_t, emb_t, err_v, emb_v, c, 0.1, steps)]
        mine = scores.score.loc[ids]
        assert mine.sort_values(ascending=False, kind="stable").index[:steps].tolist() == want
        assert (mine > 0).sum() == steps  # the rest are unranked
    for fraction in (0.05, 0.2):  # the stopped order selects what the full one does
        assert np.array_equal(method.select(scores.reset_index(), fraction, 0),
                              build("glister").select(full.reset_index(), fraction, 0))


def test_glister_deepcore_variant_is_the_static_ranking_of_batch_mean_gradients() -> None:
    table = glister_table(100, 30, 2, dim=5, seed=7)
    method = build("glister", variant="deepcore", selection_batch=16)
    assert not method.inputs().validation  # its "validation" set is the class's own images
    scores = method.score(table).set_index("sample_id")
    assert scores.score.equals(method.score(table[table.split == "train"]).set_index("sample_id").score)
    train = table[table.split == "train"]
    for c in range(2):
        ids, err_t, emb_t = class_arrays(train[train.label == c])
        want = reference_deepcore_glister(err_t, emb_t, 16)
        assert np.allclose(scores.score.loc[ids].to_numpy(), want, rtol=1e-9, atol=0)
    # The short last batch weighs more: with one batch the gains, and so the ranking, change.
    one_batch = build("glister", variant="deepcore", selection_batch=1000).score(table).set_index("sample_id")
    assert not np.array_equal(np.argsort(-scores.score.to_numpy()), np.argsort(-one_batch.score.to_numpy()))


def test_glister_variants_differ_as_documented() -> None:
    table = glister_table(80, 40, 2, dim=5, seed=11)
    train, val = table[table.split == "train"], table[table.split == "val"]
    tiny = build("glister", eta=1e-12).score(table).set_index("sample_id")
    stepped = build("glister", eta=2.0).score(table).set_index("sample_id")
    changed = False
    for c in range(2):
        ids, err_t, emb_t = class_arrays(train[train.label == c])
        _, err_v, emb_v = class_arrays(val[val.label == c])
        target = sum(gradient_vector(e, h) for e, h in zip(err_v, emb_v, strict=True)) / len(err_v)
        static = sorted(range(len(ids)), key=lambda i: (-float(gradient_vector(err_t[i], emb_t[i]) @ target), i))
        # Without the update the paper's greedy is the static ranking against the validation split...
        assert tiny.score.loc[ids].sort_values(ascending=False, kind="stable").index.tolist() == \
            [int(ids[i]) for i in static]
        changed |= stepped.score.loc[ids].sort_values(ascending=False, kind="stable").index.tolist() != \
            [int(ids[i]) for i in static]
    assert changed  # ...and the one-step update of the validation outputs moves the picks
    deepcore = build("glister", variant="deepcore", selection_batch=1000).score(table).set_index("sample_id")
    assert deepcore.score.sort_values(ascending=False).index.tolist() != \
        tiny.score.sort_values(ascending=False).index.tolist()  # its validation set is the training images


# --------------------------------------------------------------------------- DeepFool


def tiny_classifier(seed: int, linear: bool = False) -> Classifier:
    """A classifier on 1x4x4 inputs: linear, or one hidden ReLU layer."""
    torch.manual_seed(seed)
    body = nn.Flatten() if linear else nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU())
    return Classifier(body, nn.Linear(16 if linear else 12, 5), InputSpec(1, 4, 5)).double().eval()


def reference_deepfool(model: Classifier, x: torch.Tensor, max_iter: int, overshoot: float, candidates: int
                       ) -> tuple[float, int, bool]:
    """DeepFool on one image, the paper's Algorithm 2 with per-class gradient loops."""
    x0 = x.detach()
    with torch.no_grad():
        logits0 = model(x0[None])[0]
    k0 = int(logits0.argmax())
    others = sorted(range(len(logits0)), key=lambda k: -float(logits0[k]))
    others = [k for k in others if k != k0][: (candidates - 1) if candidates else None]
    total = torch.zeros_like(x0)
    steps = 0
    for _ in range(max_iter):
        point = (x0 + (1 + overshoot) * total).requires_grad_(True)
        f = model(point[None])[0]
        if int(f.detach().argmax()) != k0:
            break
        grad = {k: torch.autograd.grad(f[k], point, retain_graph=True)[0] for k in [k0, *others]}
        best = None
        for k in others:
            w = grad[k] - grad[k0]
            gap = abs(float((f[k] - f[k0]).detach()))
            distance = gap / float(w.norm())
            if best is None or distance < best[0]:
                best = (distance, gap / float(w.norm()) ** 2 * w)
        total = total + best[1]
        steps += 1
    with torch.no_grad():
        flipped = int(model((x0 + (1 + overshoot) * total)[None])[0].argmax()) != k0
    return float((1 + overshoot) * total.norm()), steps, flipped


def test_deepfool_on_a_linear_classifier_is_the_distance_to_the_nearest_boundary() -> None:
    model = tiny_classifier(0, linear=True)
    x = torch.randn(40, 1, 4, 4, dtype=torch.float64)
    found = deepfool(model, x, max_iter=50, overshoot=0.02, candidates=0)
    w, b = model.head.weight.detach(), model.head.bias.detach()
    flat = x.flatten(1)
    f = flat @ w.T + b
    k0 = f.argmax(1)
    for i in range(len(x)):
        distance = min(abs(float(f[i, k] - f[i, k0[i]])) / float((w[k] - w[k0[i]]).norm())
                       for k in range(5) if k != int(k0[i]))
        assert float(found.size[i]) == pytest.approx(1.02 * distance, rel=1e-9)
    assert found.flipped.all() and (found.iterations == 1).all()  # one step reaches a linear boundary


@pytest.mark.parametrize(("candidates", "overshoot"), [(0, 0.02), (3, 0.02)])
def test_deepfool_batched_equals_the_per_image_reference(candidates: int, overshoot: float) -> None:
    model = tiny_classifier(1)
    x = torch.randn(24, 1, 4, 4, dtype=torch.float64) * 2
    found = deepfool(model, x, max_iter=50, overshoot=overshoot, candidates=candidates)
    for i in range(len(x)):
        size, steps, flipped = reference_deepfool(model, x[i], 50, overshoot, candidates)
        assert float(found.size[i]) == pytest.approx(size, rel=1e-6, abs=1e-12), i
        assert (int(found.iterations[i]), bool(found.flipped[i])) == (steps, flipped), i
    assert found.flipped.float().mean() > 0.5 and model.training is False


def perturbation_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"sample_id": np.arange(n) * 3, "label": rng.integers(0, 3, n), "epoch": 5,
                         "perturbation": rng.gamma(2.0, 1.0, n)}).sample(frac=1.0, random_state=seed)


def test_deepfool_selects_the_smallest_perturbations_per_class() -> None:
    table = perturbation_table(120, 0)
    paper, deepcore = build("deepfool"), build("deepfool", variant="deepcore")
    assert paper.inputs().table == "perturbations" and paper.inputs().epochs == (5,)
    assert dict(paper.inputs().table_settings) == {"max_iter": 50, "overshoot": 0.02, "candidates": 10}
    assert dict(deepcore.inputs().table_settings) == {"max_iter": 50, "overshoot": 0.0, "candidates": 0}
    scores = paper.score(table)
    size = dict(zip(table.sample_id, table.perturbation, strict=True))
    assert np.allclose(scores.score, [-size[i] for i in scores.sample_id])
    assert np.allclose(deepcore.score(table).score, [-size[i] ** 2 for i in scores.sample_id])
    label = dict(zip(table.sample_id, table.label, strict=True))
    k = global_budget(len(table), 0.2)
    budgets = class_budgets(pd.Series(label).value_counts().to_dict(), k)
    want = sorted(i for c, k_c in budgets.items()
                  for i in sorted((i for i in size if label[i] == c), key=lambda i: (size[i], i))[:k_c])
    assert paper.select(scores, 0.2, seed=0).tolist() == want  # DeepCore: argsort ascending per class
    assert deepcore.select(deepcore.score(table), 0.2, seed=5).tolist() == want  # same order, squared


@pytest.mark.parametrize(("override", "message"), [
    ("score.params.glister.eta=0", r"score.params.glister.eta must be > 0, got 0"),
    ("score.params.glister.variant=cords", r"score.params.glister.variant='cords' is not allowed"),
    ("score.params.glister.selection_batch=0", r"score.params.glister.selection_batch must be >= 1"),
    ("score.params.deepfool.max_iter=0", r"score.params.deepfool.max_iter must be >= 1"),
    ("score.params.deepfool.candidates=1", r"score.params.deepfool.candidates must be 0 \(every class\) or at"),
])
def test_bad_params_are_one_line_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, ["score.methods=[glister, deepfool]", override])
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- the stages


def _cfg(methods: str, *extra: str):
    return synthetic_study("gd", "data.synthetic_size=240", "data.synthetic_classes=4", "train.epochs=2",
                           "gradients.factor_epochs=[1]", "gradients.final_epoch=last", "gradients.bound_batches=0",
                           "gradients.shard_size=60", "gradients.norms=[l2]", "gradients.groups=[last]",
                           "score.fractions=[0.05, 0.2]", "score.seeds=[0, 1]", f"score.methods=[{methods}]",
                           "score.params.deepfool.max_iter=5", *extra)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained source model and its gradient table, computed for methods that need neither new table."""
    path = tmp_path_factory.mktemp("gd")
    root, cfg = StudyRoot(str(path)), _cfg("random")
    train_source(cfg, root)
    gradients.compute_in_process(cfg, root, gradients.plan(cfg, root), load_datasets(cfg.data), torch.device("cpu"))
    return path


def test_method_tables_are_written_only_when_asked_and_resume_file_by_file(study: Path, tmp_path: Path) -> None:
    root = copy_root(study, tmp_path / "root")
    for methods in ("random", "random, gradmatch", "glister", "glister, random"):
        extra = ["score.params.glister.variant=deepcore"] if "glister" in methods else []
        assert gradients.plan(_cfg(methods, *extra), root).todo == []  # nothing reads the new tables
    cfg = _cfg("random, glister, deepfool")
    work = gradients.plan(cfg, root)  # glister (paper) and deepfool added to a finished study
    assert {t.table for t in work.todo} == {"validation", "perturbations"} and len(work.todo) < len(work.tasks)
    split = pd.read_parquet(root.url(layout.SPLIT))
    val_ids = np.sort(split.sample_id[split.split == "val"].to_numpy())
    train_ids = np.sort(split.sample_id[split.split == "train"].to_numpy())
    compute_s = gradients.compute_in_process(cfg, root, work, load_datasets(cfg.data), torch.device("cpu"))
    assert compute_s > 0 and gradients.plan(cfg, root).todo == []

    val = pd.read_parquet(root.url(layout.VALIDATION))
    assert np.array_equal(np.sort(val.sample_id.to_numpy()), val_ids) and (val.epoch == 2).all()
    assert len(val.err.iloc[0]) == 4 and len(val.emb.iloc[0]) == 128 and val.loss.notna().all()
    settings = build("deepfool", max_iter=5).inputs().table_settings
    folder = layout.perturbation_table(settings)
    found = pd.read_parquet(root.url(folder))
    assert np.array_equal(np.sort(found.sample_id.to_numpy()), train_ids)
    assert np.isfinite(found.perturbation).all() and (found.perturbation > 0).all()
    assert found.iterations.between(1, 5).all() and found.flipped.mean() > 0.5

    # The table holds what the attack gives on the images, on this device.
    datasets = load_datasets(cfg.data)
    model = load_source_model(cfg, root, datasets, 2, torch.device("cpu"))
    ids = np.sort(found.sample_id.to_numpy()[:8])
    x, _, _ = next(iter(datasets.batches("train", ids, 8)))
    direct = deepfool(model, x, **dict(settings))
    assert np.allclose(found.set_index("sample_id").perturbation.loc[ids], direct.size.double().numpy(), rtol=1e-5)

    lost = [next(t for t in work.tasks if t.table == table) for table in ("validation", "perturbations")]
    for t in lost:
        root.delete(t.path)
    again = gradients.plan(cfg, root)
    assert [(t.table, t.shard) for t in again.todo] == [(t.table, t.shard) for t in lost]
    gradients.compute_in_process(cfg, root, again, datasets, torch.device("cpu"))
    assert gradients.plan(cfg, root).todo == []
    assert pd.read_parquet(root.url(layout.VALIDATION)).sample_id.is_unique

    rows = {r.unit: r for r in plan_study(cfg, root, ["gradients"], Counts.of(cfg, root, datasets),
                                                   {"CPU": 2.0, "GPU": 0.0}, {})}
    assert rows["validation unit (forward)"].units == len(score.class_units(work.manifest))
    assert rows["shard x DeepFool"].units == work.manifest["shards_per_epoch"]
    assert rows["shard x DeepFool"].done == rows["shard x DeepFool"].units


def test_glister_and_deepfool_through_the_score_stage(study: Path, tmp_path: Path) -> None:
    """A smoke study: the gradient stage computes the new tables, the score stage hands GLISTER
    each class unit's validation rows and DeepFool the perturbations; exact-size, deterministic
    subsets; the deepcore variant of GLISTER needs no validation table."""
    root = copy_root(study, tmp_path / "root")
    cfg = _cfg("random, glister, deepfool")
    with pytest.raises(StageError, match=r"glister reads .*validation, which the gradient stage has not written"):
        score.check_inputs(root, score.plan(cfg, root))  # a gradient stage run without glister configured
    gradients.compute_in_process(cfg, root, gradients.plan(cfg, root), load_datasets(cfg.data), torch.device("cpu"))
    work_plan = score.plan(cfg, root)
    score.check_inputs(root, work_plan)
    n_train = work_plan.table["rows_per_epoch"]
    for work in work_plan.todo:
        inputs = work.method.inputs()
        if inputs.by_class:
            parts = []
            for unit in score.class_units(work_plan.table):
                rows = score.read_inputs(root, inputs, work_plan.table, unit)
                assert set(rows.split) == {"train", "val"} and rows[rows.split == "val"].sample_id.is_unique
                parts.append(score.score_unit(work.method, root, work_plan.table, unit))
            scores, analysis = score.merge_units(parts)
        else:
            scores, analysis = work.method.score(score.read_inputs(root, inputs, work_plan.table)), {}
        assert len(scores) == n_train and scores.score.notna().all(), work.name
        score.write_method(cfg, root, work, scores, analysis)
    assert score.plan(cfg, root).todo == []
    subsets = pd.read_parquet(root.url(layout.SUBSETS))
    for (method, fraction, _), rows in subsets.groupby(["method", "fraction", "seed"]):
        assert len(rows) == global_budget(n_train, fraction) and rows.sample_id.is_unique, (method, fraction)
    for m in ("glister", "deepfool"):
        chosen = subsets[(subsets.method == m) & (subsets.fraction == 0.2)]
        assert chosen[chosen.seed == 0].sample_id.tolist() == chosen[chosen.seed == 1].sample_id.tolist()

    deepcore = _cfg("glister", "score.params.glister.variant=deepcore")
    root.delete(layout.VALIDATION)
    method = score.build_method(deepcore, "glister", work_plan.final_epoch)
    unit = score.class_units(work_plan.table)[0]
    assert "split" not in score.read_inputs(root, method.inputs(), work_plan.table, unit).columns
    assert len(score.score_unit(method, root, work_plan.table, unit)[0]) > 0


def test_the_gradient_actor_writes_the_new_tables(study: Path, tmp_path: Path) -> None:
    """The Ray actor's class, run here without Ray, writes each new file with its kind's schema."""
    from coreset.cluster.gradients import GradientWorker
    from coreset.tables import read_table

    root = copy_root(study, tmp_path / "root")
    cfg = _cfg("glister, deepfool")
    work = gradients.plan(cfg, root)
    gradients.record_manifest(root, work)
    worker = GradientWorker(cfg.to_dict(), root.uri, threads=1)
    for task in work.todo:
        epoch, shard, seconds = worker.run(task)
        assert (epoch, shard) == (task.epoch, task.shard) and seconds > 0
        assert len(read_table(root, task.path, task.kind)) == len(task.ids)
    assert gradients.plan(cfg, root).todo == []
    rates = gradients.measured_rates([(t, 1.0) for t in work.todo], 10.0, placement.gradients(cfg, {"CPU": 2}, 1))
    assert {"gradients.factor_row", "gradients.perturbation_row"} <= set(rates)
