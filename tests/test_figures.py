"""coreset.figures: each figure from small realistic tables; the numbers it draws are checked."""
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from coreset.analysis import label_entropy_curve, topk_overlap_curve
from coreset.figures import (
    accuracy_vs_fraction,
    batch_bound,
    image_grid,
    label_entropy,
    percentile_rows,
    subset_composition,
    subset_diagnostics,
    thresholds,
    topk_overlap,
    trajectory_heatmap,
)
from coreset.figures.magnitude import heatmap_matrix

REPO = Path(__file__).resolve().parents[1]
METHODS = ("random", "max_gradient", "non_extreme", "gradient_cdf", "gradsimcore")
FRACTIONS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5)


def assert_png(path: Path, min_side: int = 200, max_side: int = 4000) -> None:
    """A real PNG of sensible size that is not a blank canvas."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert min_side <= width <= max_side and min_side <= height <= max_side, (width, height)
    assert imread(path)[..., :3].std() > 0.01


# ---- tables as a study writes them ---------------------------------------------------------------

def accuracy_table(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for target, ceiling in (("cnn", 0.99), ("resnet18", 0.93)):
        for m, method in enumerate(METHODS):
            for fraction in FRACTIONS:
                for seed in range(3):
                    acc = ceiling - (ceiling - 0.1) * np.exp(-fraction * (60 + 15 * m)) + rng.normal(0, 0.01)
                    rows.append((method, fraction, seed, target, acc))
        rows += [("full", 1.0, s, target, ceiling + rng.normal(0, 0.002)) for s in range(3)]
    return pd.DataFrame(rows, columns=["method", "fraction", "seed", "target_model", "test_acc"]).assign(
        source_model="cnn", n_train=100)


def batch_bound_table(rng: np.random.Generator, batches: int = 48, size: int = 32, dim: int = 64) -> pd.DataFrame:
    """Real norms of summed random per-sample gradients sharing a batch-specific direction."""
    rows = []
    for column, shared in (("l2_last", 0.6), ("l2_all", 0.2)):
        for b in range(batches):
            scale = rng.lognormal(0, 0.6, size)[:, None]
            g = scale * (shared * rng.normal(size=dim) + rng.normal(size=(size, dim)))
            rows.append((b, 5, size, column, float(np.linalg.norm(g.sum(0))), float(np.linalg.norm(g, axis=1).sum())))
    return pd.DataFrame(rows, columns=["batch", "epoch", "batch_size", "column", "norm_of_sum", "sum_of_norms"])


def trajectory_table(rng: np.random.Generator, probes: int = 64, epochs: int = 11) -> pd.DataFrame:
    rate = rng.uniform(0.05, 0.8, probes)
    rows = [(i, i % 10, e, 0.0, 0.0, float(2.0 * np.exp(-rate[i] * e) * rng.lognormal(0, 0.05)), 0.0)
            for i in range(probes) for e in range(epochs)]
    return pd.DataFrame(rows, columns=["sample_id", "label", "epoch", "loss", "l1_last", "l2_last", "linf_last"])


def scores_table(rng: np.random.Generator, n: int = 2000, classes: int = 10, skew: float = 1.0) -> pd.DataFrame:
    labels = rng.integers(0, classes, n)
    return pd.DataFrame({"sample_id": np.arange(n), "label": labels,
                         "score": rng.lognormal(0, 1, n) * (1 + skew * (labels < 3))})


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---- accuracy ----------------------------------------------------------------------------------

def test_accuracy_vs_fraction_draws_seed_means_and_the_full_reference(tmp_path: Path, rng) -> None:
    acc = accuracy_table(rng)
    unfinished = pd.DataFrame([("random", 0.1, 9, "cnn", np.nan), ("random", 0.1, 0, "vgg16", np.nan)],
                              columns=["method", "fraction", "seed", "target_model", "test_acc"])
    out = accuracy_vs_fraction(pd.concat([acc, unfinished], ignore_index=True), tmp_path / "acc.png")
    assert_png(out.path)
    assert set(out.data["target_model"]) == {"cnn", "resnet18"}  # vgg16 has no finished trial: no panel
    expected = acc.groupby(["target_model", "method", "fraction"])["test_acc"].agg(["mean", "std"])
    got = out.data.set_index(["target_model", "method", "fraction"])
    np.testing.assert_allclose(got["mean"], expected["mean"].loc[got.index])
    np.testing.assert_allclose(got["std"], expected["std"].loc[got.index])
    assert (got["seeds"] == 3).all()
    assert got.loc[("cnn", "full", 1.0), "mean"] == pytest.approx(
        acc.query("method == 'full' and target_model == 'cnn'").test_acc.mean())


def test_accuracy_vs_fraction_one_seed_has_zero_band_and_bad_input_is_refused(tmp_path: Path, rng) -> None:
    acc = accuracy_table(rng).query("seed == 0")
    out = accuracy_vs_fraction(acc, tmp_path / "one_seed.png")
    assert (out.data["std"] == 0).all()
    with pytest.raises(ValueError, match="lacks columns \\['test_acc'\\]"):
        accuracy_vs_fraction(acc.drop(columns="test_acc"), tmp_path / "x.png")
    with pytest.raises(ValueError, match="> 0"):
        accuracy_vs_fraction(acc.assign(fraction=0.0), tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        accuracy_vs_fraction(acc.iloc[:0], tmp_path / "x.png")


# ---- gradient magnitudes -------------------------------------------------------------------------

def test_batch_bound_reports_numpy_pearson_r_per_column(tmp_path: Path, rng) -> None:
    table = batch_bound_table(rng)
    assert (table.norm_of_sum <= table.sum_of_norms).all()
    partial = pd.concat([table, table.head(1).assign(norm_of_sum=np.nan)], ignore_index=True)
    out = batch_bound(partial, tmp_path / "bound.png")
    assert_png(out.path)
    stats = out.data.set_index("column")
    for column, rows in table.groupby("column"):
        assert stats.loc[column, "batches"] == len(rows)
        assert stats.loc[column, "pearson_r"] == pytest.approx(np.corrcoef(rows.sum_of_norms, rows.norm_of_sum)[0, 1])
    assert stats["pearson_r"].min() > 0.5


def test_batch_bound_with_one_batch_has_undefined_r(tmp_path: Path, rng) -> None:
    out = batch_bound(batch_bound_table(rng).query("batch == 0 and column == 'l2_last'"), tmp_path / "b.png")
    assert np.isnan(out.data["pearson_r"].iloc[0])
    with pytest.raises(ValueError, match="norm_of_sum"):
        batch_bound(batch_bound_table(rng).drop(columns="norm_of_sum"), tmp_path / "x.png")


def test_trajectory_heatmap_rows_are_sorted_by_final_norm(tmp_path: Path, rng) -> None:
    traj = trajectory_table(rng)
    out = trajectory_heatmap(traj, tmp_path / "heat.png")
    assert_png(out.path)
    final = traj[traj.epoch == traj.epoch.max()].set_index("sample_id")["l2_last"]
    assert list(out.data.index) == list(final.sort_values(ascending=False).index)
    assert list(out.data.columns) == sorted(traj.epoch.unique())
    sid = out.data.index[0]
    np.testing.assert_allclose(out.data.loc[sid].to_numpy(),
                               -np.log10(traj[traj.sample_id == sid].sort_values("epoch").l2_last.to_numpy()))


def test_trajectory_heatmap_partial_and_degenerate_tables(tmp_path: Path, rng) -> None:
    traj = trajectory_table(rng, probes=4, epochs=3)
    traj.loc[(traj.sample_id == 0) & (traj.epoch == 2), "l2_last"] = np.nan  # unfinished at the last epoch
    traj.loc[(traj.sample_id == 1) & (traj.epoch == 0), "l2_last"] = 0.0
    m = heatmap_matrix(traj)
    assert m.index[-1] == 0 and np.isnan(m.loc[0, 2])
    assert m.loc[1, 0] == pytest.approx(-np.log10(traj.loc[traj.l2_last > 0, "l2_last"].min()))
    assert_png(trajectory_heatmap(traj, tmp_path / "partial.png").path)
    with pytest.raises(ValueError, match="several rows"):
        heatmap_matrix(pd.concat([traj, traj.head(1)]))
    with pytest.raises(ValueError, match="no finite"):
        trajectory_heatmap(traj.assign(l2_last=np.nan), tmp_path / "x.png")
    with pytest.raises(ValueError, match="linf_all"):
        trajectory_heatmap(traj, tmp_path / "x.png", column="linf_all")


# ---- rankings ----------------------------------------------------------------------------------

def test_label_entropy_draws_each_ranking_and_the_uniform_baseline(tmp_path: Path, rng) -> None:
    fractions = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0)
    curves = pd.concat([label_entropy_curve(scores_table(rng, skew=s), fractions=fractions).assign(method=m)
                        for m, s in (("l2_last", 4.0), ("gradsimcore", 0.0))], ignore_index=True)
    out = label_entropy(curves, 10, tmp_path / "entropy.png")
    assert_png(out.path)
    pd.testing.assert_frame_equal(out.data,
                                  curves.sort_values(["method", "fraction"])[["method", "fraction", "entropy"]]
                                  .reset_index(drop=True))
    assert curves.entropy.max() <= np.log2(10) + 1e-12
    assert_png(label_entropy(curves, 10, tmp_path / "entropy_k.png", x="k").path)
    with pytest.raises(ValueError, match="x must be"):
        label_entropy(curves, 10, tmp_path / "x.png", x="percent")
    with pytest.raises(ValueError, match="method"):
        label_entropy(curves.drop(columns="method"), 10, tmp_path / "x.png")


def test_topk_overlap_draws_the_curve_and_random_baseline(tmp_path: Path, rng) -> None:
    a = scores_table(rng)
    b = a.assign(score=a.score * rng.lognormal(0, 0.5, len(a)))
    ks = [5, 10, 20, 50, 100, 200, 500, 1000, 2000]
    curve = topk_overlap_curve(a, b, ks=ks)
    out = topk_overlap(curve, tmp_path / "overlap.png", label="vgg16 ∩ cnn")
    assert_png(out.path)
    np.testing.assert_allclose(out.data.overlap, curve.overlap)
    assert set(out.data.pair) == {"vgg16 ∩ cnn"} and out.data.overlap.iloc[-1] == 1.0
    pairs = pd.concat([curve.assign(pair="vgg16 ∩ cnn"),
                       topk_overlap_curve(a, a.assign(score=rng.random(len(a))), ks=ks).assign(pair="vgg16 ∩ linear")])
    assert set(topk_overlap(pairs, tmp_path / "pairs.png").data.pair) == {"vgg16 ∩ cnn", "vgg16 ∩ linear"}


# ---- selection ---------------------------------------------------------------------------------

def thresholds_table(rng: np.random.Generator, classes: int) -> pd.DataFrame:
    return pd.DataFrame([(e, c, 0.2 + 0.05 * e + rng.normal(0, 0.02), 5400 + 10 * c) for c in range(classes)
                         for e in range(1, 6)], columns=["epoch", "label", "threshold", "n"])


@pytest.mark.parametrize("classes", [10, 100])
def test_thresholds_per_class_and_checkpoint(tmp_path: Path, rng, classes: int) -> None:
    table = thresholds_table(rng, classes)
    out = thresholds(table, tmp_path / f"phi{classes}.png")
    assert_png(out.path)
    assert out.data.shape == (classes, 5)
    assert out.data.loc[3, 2] == table.query("label == 3 and epoch == 2").threshold.item()
    with pytest.raises(ValueError, match="'n'"):
        thresholds(table.drop(columns="n"), tmp_path / "x.png")


def test_subset_composition_counts_images_per_class(tmp_path: Path, rng) -> None:
    split = pd.DataFrame({"sample_id": np.arange(3000), "label": rng.integers(0, 10, 3000)})
    parts = []
    for fraction in (0.02, 0.1):
        k = int(fraction * len(split))
        for seed in range(3):
            parts.append(pd.DataFrame({"method": "random", "fraction": fraction, "seed": seed,
                                       "sample_id": rng.choice(3000, k, replace=False)}))
        weight = 1.0 + 5 * (split.label.to_numpy() < 2)  # a top-k skewed to classes 0 and 1
        parts.append(pd.DataFrame({"method": "max_gradient", "fraction": fraction, "seed": 0,
                                   "sample_id": rng.choice(3000, k, replace=False, p=weight / weight.sum())}))
    subsets = pd.concat(parts, ignore_index=True)
    names = [f"{c} - digit" for c in range(10)]
    out = subset_composition(subsets, split, tmp_path / "composition.png", class_names=names)
    assert_png(out.path)
    labels = split.set_index("sample_id").label
    one = subsets.query("method == 'random' and fraction == 0.1")
    expected = (one.assign(label=labels.loc[one.sample_id].to_numpy()).groupby(["seed", "label"]).size()
                .unstack(fill_value=0))
    got = out.data.query("method == 'random' and fraction == 0.1").set_index("label")
    np.testing.assert_allclose(got["count"], expected.mean().loc[got.index])
    np.testing.assert_allclose(got["std"], expected.std().loc[got.index])
    per_method = out.data.groupby(["fraction", "method"])["count"].sum()
    assert per_method.loc[(0.1, "max_gradient")] == 300 and len(out.data) == 2 * 2 * 10
    with pytest.raises(ValueError, match="have no label"):
        subset_composition(subsets, split.iloc[:100], tmp_path / "x.png")
    with pytest.raises(ValueError, match="class_names"):
        subset_composition(subsets, split, tmp_path / "x.png", class_names=names[:5])


def diagnostics_table() -> pd.DataFrame:
    """Two classes; compared images c give c(c-1)/2 pairs, which weigh each class's mean cosine."""
    rows = [("random", 0.1, 0, 0, 3, 0.2, 0), ("random", 0.1, 0, 1, 2, 0.6, 0),
            ("random", 0.1, 1, 0, 2, 0.1, 1), ("random", 0.1, 1, 1, 1, np.nan, 0),
            ("max_gradient", 0.1, 0, 0, 4, 0.5, 2), ("max_gradient", 0.1, 0, 1, 0, np.nan, 0),
            ("random", 0.2, 0, 0, 5, 0.25, 0), ("max_gradient", 0.2, 0, 0, 5, 0.15, 1)]
    table = pd.DataFrame(rows, columns=["method", "fraction", "seed", "label", "compared", "mean_cosine",
                                        "near_duplicates"])
    return table.assign(images=table["compared"])


def test_subset_diagnostics_against_random_at_each_fraction(tmp_path: Path) -> None:
    out = subset_diagnostics(diagnostics_table(), tmp_path / "diagnostics.png")
    assert_png(out.path)
    got = out.data.set_index(["method", "fraction"])
    # random at 0.1: seed 0 (3·0.2 + 1·0.6) / 4 = 0.3, seed 1 0.1 (one class with a pair): 0.2 over seeds
    assert got.loc[("random", 0.1), "mean_cosine"] == pytest.approx(0.2)
    assert got.loc[("random", 0.1), "near_duplicate_share"] == pytest.approx((0 + 1 / 3) / 2)
    assert got.loc[("max_gradient", 0.1), "cosine_minus_reference"] == pytest.approx(0.5 - 0.2)
    assert got.loc[("max_gradient", 0.1), "near_duplicate_share"] == pytest.approx(2 / 4)
    assert got.loc[("max_gradient", 0.2), "cosine_minus_reference"] == pytest.approx(-0.1)
    assert got.loc[("random", 0.2), "cosine_minus_reference"] == 0.0
    no_random = diagnostics_table().query("method != 'random'")
    with pytest.raises(ValueError, match="needs the 'random' subsets"):
        subset_diagnostics(no_random, tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        subset_diagnostics(no_random.iloc[:0], tmp_path / "x.png")


# ---- images ------------------------------------------------------------------------------------

def test_percentile_rows_picks_the_ranks_around_each_percentile() -> None:
    n = 1000
    ids = np.random.default_rng(3).permutation(n)
    scores = pd.DataFrame({"sample_id": ids, "label": ids % 10, "score": ids * 0.5})  # rank == sample_id
    rows = percentile_rows(scores, (99, 50, 0, 100), per=8)
    picked = {p: g.sample_id.tolist() for p, g in rows.groupby("percentile", sort=False)}
    assert picked[99] == list(range(992, 984, -1))  # centre round(0.99 * 999) = 989
    assert picked[50] == list(range(503, 495, -1))  # centre 500 (499.5 rounds up)
    assert picked[0] == list(range(7, -1, -1)) and picked[100] == list(range(999, 991, -1))
    assert ((rows["rank"] == rows["sample_id"]).all()
            and list(rows.columns) == ["percentile", "rank", "sample_id", "score", "label"])
    tied = pd.DataFrame({"sample_id": [5, 3, 9, 1], "score": [1.0, 1.0, 1.0, 1.0]})
    assert percentile_rows(tied, (50,), per=2).sample_id.tolist() == [5, 3]  # ranks 1-2 of ids 1,3,5,9
    assert len(percentile_rows(tied, (99,), per=10)) == 4
    with pytest.raises(ValueError, match="several rankings"):
        percentile_rows(pd.concat([scores.assign(method="a"), scores.assign(method="b")]))
    with pytest.raises(ValueError, match="percentiles"):
        percentile_rows(scores, (101,))


@pytest.fixture(scope="module")
def mnist(shared_data: Path):
    from coreset.config import DataConfig
    from coreset.data import load_datasets

    return load_datasets(DataConfig(name="mnist", root=str(shared_data))).train


def test_image_grid_of_mnist_at_percentiles_of_a_score(tmp_path: Path, mnist) -> None:
    """Fig. 4's layout on real MNIST rows, ranked by ink (a stand-in score)."""
    ids = np.arange(5000)
    images = mnist.images[ids].numpy()
    scores = pd.DataFrame({"sample_id": ids, "label": mnist.labels[ids].numpy(),
                           "score": images.reshape(len(ids), -1).mean(1)})
    rows = percentile_rows(scores, per=8)
    titles = [mnist.classes[c] for c in rows.label]
    out = image_grid(images[rows.sample_id.to_numpy()], titles, tmp_path / "mnist.png", cols=8,
                     title="MNIST by ink: rows at the 99th, 95th, 50th, 5th percentile")
    assert_png(out.path)
    assert out.data.title.tolist() == titles
    nhwc = image_grid(images[:6].transpose(0, 2, 3, 1), [mnist.classes[c] for c in mnist.labels[:6]],
                      tmp_path / "nhwc.png", cols=3)
    grey = image_grid(images[:6, 0], list("abcdef"), tmp_path / "grey.png", cols=3)
    assert imread(nhwc.path).shape == imread(grey.path).shape


def test_image_grid_rgb_and_bad_input(tmp_path: Path, rng) -> None:
    rgb = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    out = image_grid(rgb, ["cat", "dog", "ship", "truck", "frog"], tmp_path / "rgb.png", cols=5)
    assert_png(out.path, min_side=150)
    with pytest.raises(ValueError, match="uint8"):
        image_grid(rgb.astype(np.float32), ["a"] * 5, tmp_path / "x.png")
    with pytest.raises(ValueError, match="titles"):
        image_grid(rgb, ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        image_grid(rng.integers(0, 256, (2, 4, 8, 8), dtype=np.uint8), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no images"):
        image_grid(rgb[:0], [], tmp_path / "x.png")


def test_figures_leave_no_pyplot_state(tmp_path: Path) -> None:
    """No pyplot import, hence no backend selection and no registry of open figures."""
    code = ("import sys, pandas as pd; from coreset.figures import topk_overlap; "
            "topk_overlap(pd.DataFrame({'k': [1, 2], 'overlap': [0.0, 1.0], 'random_baseline': [0.5, 1.0]}), "
            "sys.argv[1]); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "check.png")], check=True, cwd=REPO,
                   env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_empty_tables_are_refused_with_a_clear_error(tmp_path: Path, rng) -> None:
    split = pd.DataFrame({"sample_id": np.arange(10), "label": np.arange(10) % 2})
    subsets = pd.DataFrame({"method": [], "fraction": [], "seed": [], "sample_id": []})
    calls = [
        lambda p: batch_bound(batch_bound_table(rng).iloc[:0], p),
        lambda p: label_entropy(pd.DataFrame(columns=["method", "fraction", "entropy"]), 10, p),
        lambda p: topk_overlap(pd.DataFrame(columns=["k", "overlap", "random_baseline"]), p),
        lambda p: thresholds(thresholds_table(rng, 2).iloc[:0], p),
        lambda p: subset_composition(subsets, split, p),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(ValueError, match="nothing to plot"):
            call(tmp_path / f"{i}.png")
        assert not (tmp_path / f"{i}.png").exists()
