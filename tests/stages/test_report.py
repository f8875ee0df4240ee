"""The report stage on a small synthetic study built in-process (no Ray): every figure the tables
allow, a partial report of a partial study, nothing rewritten when nothing changed, a redraw
when an input did, the page in a headless browser, and an s3:// root."""
from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.image import imread
from studies import diagnose_in_process, synthetic_study

from coreset import layout
from coreset.data import load_datasets, split_ids
from coreset.errors import StageError, UserError
from coreset.reporting import published
from coreset.stages import gradients, report, score
from coreset.stages.retrain import Trial, retrain, subset_ids
from coreset.stages.train import load_source_model, train_source
from coreset.storage import StudyRoot
from coreset.tables import read_table, write_table

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ALL = {s.name for s in report.SPECS}
OTHER_ROOTS = {"topk_overlap", "source_spread"}  # drawn only with --compare or --replicas


def _cfg(*extra: str):
    return synthetic_study("report", "data.synthetic_size=240", "train.epochs=2", "gradients.factor_epochs=[1, 2]",
                           "gradients.final_epoch=last", "gradients.groups=[last, all]", "gradients.bound_batches=4",
                           "gradients.bound_batch_size=16", "score.fractions=[0.05, 0.2]", "score.seeds=[0]",
                           "retrain.policy=steps", "retrain.steps=6", "retrain.evaluations=2", "retrain.batch_size=16",
                           *extra)


def _score_all(cfg, root: StudyRoot) -> None:
    """Every configured method scored in-process, as the score stage's tasks would."""
    score_plan = score.plan(cfg, root)
    for work in score_plan.todo:
        if work.method.inputs().by_class:
            units = score.class_units(score_plan.table)
            parts = [score.score_unit(work.method, root, score_plan.table, u) for u in units]
            scores, analysis = score.merge_units(parts)
        else:
            scores, analysis = work.method.score(score.read_inputs(root, work.method.inputs(), score_plan.table)), {}
        score.write_method(cfg, root, work, scores, analysis)
    score.write_label_entropy(cfg, root, score_plan)
    diagnose_in_process(root, score_plan.table)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Source training only: the partial study."""
    path = tmp_path_factory.mktemp("trained") / "study"
    train_source(_cfg(), StudyRoot(str(path)))
    return path


@pytest.fixture(scope="module")
def full(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stage: gradients, the batch bound, scores and subsets, and four retraining trials."""
    path = tmp_path_factory.mktemp("full") / "study"
    shutil.copytree(trained, path)
    cfg, root = _cfg(), StudyRoot(str(path))
    datasets, cpu = load_datasets(cfg.data), torch.device("cpu")
    gradients.compute_in_process(cfg, root, gradients.plan(cfg, root), datasets, cpu)
    model = load_source_model(cfg, root, datasets, 2, cpu)
    train_ids = split_ids(read_table(root, layout.SPLIT, "split"))
    rows = gradients.batch_bound_rows(model, datasets, train_ids, 2, cfg.gradients, cfg.seed, cpu)
    write_table(root, layout.BATCH_BOUND, pd.DataFrame(rows), "batch_bound")
    _score_all(cfg, root)
    subsets = pd.read_parquet(root.url(layout.SUBSETS))
    trials = [Trial(m, f, 0, cfg.model.name) for m in ("random", "gradsimcore") for f in (0.05, 0.2)]
    accuracy = [retrain(cfg, datasets, t, subset_ids(t, subsets, train_ids), device=cpu) for t in trials]
    write_table(root, layout.ACCURACY, pd.DataFrame(accuracy), "accuracy")
    return path


@pytest.fixture(scope="module")
def reported(full: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, report.ReportResult]:
    """The full study with its report written once."""
    path = tmp_path_factory.mktemp("reported") / "study"
    shutil.copytree(full, path)
    return path, report.write_report(_cfg(), StudyRoot(str(path)))


@pytest.fixture
def study(reported: tuple[Path, report.ReportResult], tmp_path: Path) -> StudyRoot:
    """A copy of the reported study (modification times kept, as ``cp -p`` does)."""
    shutil.copytree(reported[0], tmp_path / "study")
    return StudyRoot(str(tmp_path / "study"))


class _Page(HTMLParser):
    """The images, links, headings and table cells of index.html."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self.cells: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"] or "")
        elif tag == "a":
            self.links.append(a["href"] or "")
        elif tag in ("h2", "td"):
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "td") and self._text is not None:
            (self.headings if tag == "h2" else self.cells).append("".join(self._text))
            self._text = None


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def assert_png(path: Path) -> None:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", head[16:24])
    assert width >= 100 and height >= 100, (path, width, height)
    assert imread(path)[..., :3].std() > 0.01, f"{path} is blank"


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_full_study_gets_every_figure(reported: tuple[Path, report.ReportResult]) -> None:
    path, result = reported
    index = path / layout.REPORT_INDEX
    assert result.index == StudyRoot(str(path)).url(layout.REPORT_INDEX)
    assert set(result.drawn) == ALL - OTHER_ROOTS and set(result.notes) == OTHER_ROOTS
    page = _page(index)
    assert sorted(page.images) == sorted(f"{n}.png" for n in result.drawn)
    for src in page.images:
        assert_png(index.parent / src)
    for href in page.links:
        assert (index.parent / href).stat().st_size > 0, href
    assert page.headings == ["Source training", "Per-sample gradients", "Scores and subsets",
                             "Retraining on the subsets"]
    assert any("±" in c for c in page.cells)  # the accuracy summary table
    html = index.read_text(encoding="utf-8")
    assert "GradSimCore paper reports no synthetic results" in html and "Figs. 1-8" in html
    assert "Not drawn: needs a second study given with --compare" in html


def test_unchanged_inputs_rewrite_nothing(study: StudyRoot) -> None:
    assert report.plan(_cfg(), study).up_to_date  # a copy that keeps modification times included
    folder = Path(study.path(layout.REPORT))
    before = _mtimes(folder)
    again = report.write_report(_cfg(), study)
    assert again.drawn == [] and set(again.unchanged) == ALL - OTHER_ROOTS
    assert _mtimes(folder) == before


def test_changed_input_redraws_its_figures_only(study: StudyRoot) -> None:
    cfg = _cfg()
    folder = Path(study.path(layout.REPORT))
    before = _mtimes(folder)
    accuracy = read_table(study, layout.ACCURACY, "accuracy")
    write_table(study, layout.ACCURACY, accuracy.assign(test_acc=accuracy.test_acc * 0.5), "accuracy")
    assert [w.spec.name for w in report.plan(cfg, study).todo] == ["accuracy"]
    result = report.write_report(cfg, study)
    assert result.drawn == ["accuracy"]
    after = _mtimes(folder)
    changed = {n for n in after if after[n] != before.get(n)}
    assert changed == {"accuracy.png", "accuracy.csv", "index.html", "_manifest.json"}
    summary = pd.read_csv(folder / "accuracy.csv")
    assert np.allclose(sorted(summary["mean"]), sorted(accuracy.test_acc * 0.5))


def test_partial_study_gives_a_partial_report(trained: Path, tmp_path: Path) -> None:
    shutil.copytree(trained, tmp_path / "study")
    root = StudyRoot(str(tmp_path / "study"))
    result = report.write_report(_cfg(), root)
    assert result.drawn == ["trajectory"]
    assert result.notes["accuracy"] == "needs accuracy.parquet (jobs/retrain.py)"
    page = _page(Path(root.path(layout.REPORT_INDEX)))
    assert page.images == ["trajectory.png"]
    assert "Source training" in page.headings


def test_empty_root_is_a_stage_error(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="nothing to report"):
        report.write_report(_cfg(), StudyRoot(str(tmp_path / "empty")))
    with pytest.raises(StageError, match="holds no gradient ranking"):
        report.write_report(_cfg(), StudyRoot(str(trained)), compare=StudyRoot(str(tmp_path / "empty")))


def test_compare_draws_the_topk_overlap(study: StudyRoot, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(study.path(""), other)
    other_root = StudyRoot(str(other))
    scores = read_table(other_root, layout.scores("max_gradient"), "scores")
    rng = np.random.default_rng(0)
    write_table(other_root, layout.scores("max_gradient"), scores.assign(score=rng.permutation(scores.score)), "scores")
    result = report.write_report(_cfg(), study, compare=other_root)
    assert result.drawn == ["topk_overlap"] and set(result.notes) == {"source_spread"}
    curve = pd.read_csv(Path(study.path(layout.report_file("topk_overlap.csv"))))
    assert curve["overlap"].iloc[-1] == pytest.approx(1.0) and curve["overlap"].iloc[0] < 1.0


def test_published_numbers_meet_ours_where_dataset_models_and_fraction_match() -> None:
    table = published.published()
    assert set(table["table"]) == {"Table 2", "Table 3", "Table 4", "Table 5", "Table 6"}
    assert table["accuracy"].between(0, 100).all() and table["std"].isna().sum() == 10  # Table 5 gives no std
    summary = pd.DataFrame({"target_model": "vgg16_bn", "method": ["gradsimcore", "random", "max_gradient"],
                            "fraction": 0.01, "mean": [0.45, 0.40, 0.47], "std": [0.01, 0.02, 0.0], "seeds": 2})
    rows, note = published.compare(summary, "cifar10", 10, "resnet18_cifar")
    assert len(rows) == 1 and "match" in note
    row = rows.iloc[0]
    assert (row["table"], row["source"], row["target"]) == ("Table 3", "ResNet18", "VGG16")
    assert row["GradSimCore (paper)"] == "47.21 ± 0.95" and row["gradsimcore (ours)"] == "45.00 ± 1.00"
    assert row["best of ours"] == "47.00 ± 0.00 (max_gradient)"
    _, note = published.compare(summary, "cifar10", 10, "mnist_cnn")
    assert note.startswith("No published CIFAR10 model pair matches ours (mnist_cnn → vgg16_bn)")
    assert published.paper_dataset("imagefolder", 1000) == "ImageNet-1K"
    assert published.paper_dataset("imagefolder", 200) is None


def test_page_escapes_text(tmp_path: Path) -> None:
    from coreset.reporting.page import Table, render

    html = render("Study <b>&", "s3://b/<x>", [], {}, [Table(report.RETRAIN, "t", "n <i>",
                                                               pd.DataFrame({"<c>": ["a&b"]}), None)])
    assert "<b>&" not in html and "&lt;b&gt;&amp;" in html and "&lt;c&gt;" in html and "a&amp;b" in html


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium; the page is checked with html.parser")
def test_page_renders_in_headless_chromium(reported: tuple[Path, report.ReportResult], tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,3000", (reported[0] / layout.REPORT_INDEX).as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    assert_png(shot)
    if os.environ.get("CORESET_REPORT_SHOT"):  # keep the screenshot to look at
        shutil.copy(shot, os.environ["CORESET_REPORT_SHOT"])


def test_report_on_an_s3_root(s3_bucket: str, full: Path) -> None:
    import pyarrow.fs as pafs

    root = StudyRoot(f"s3://{s3_bucket}/study")
    keep = [layout.SPLIT, layout.TRAJECTORY, layout.ACCURACY]
    for rel in keep:
        root.write_bytes(rel, (full / rel).read_bytes())
    result = report.write_report(_cfg(), root)
    assert set(result.drawn) == {"trajectory", "accuracy"}
    assert root.read_bytes(layout.REPORT_INDEX).startswith(b"<!DOCTYPE html>")
    assert root.read_bytes(layout.report_file("accuracy.png"))[:4] == b"\x89PNG"
    assert report.plan(_cfg(), root).up_to_date
    info = root.fs.get_file_info(root.path(layout.REPORT_INDEX))
    assert info.type == pafs.FileType.File


@pytest.mark.slow
def test_report_job(full: Path, tmp_path: Path) -> None:
    shutil.copytree(full, tmp_path / "study")
    config = tmp_path / "report.yaml"
    config.write_text(yaml.safe_dump(_cfg().to_dict(), sort_keys=False))
    job = [sys.executable, str(REPO / "jobs" / "report.py"), "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([*job, "--root", str(tmp_path / "study")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "study" / "report" / "index.html") in done.stderr
    empty = subprocess.run([*job, "--root", str(tmp_path / "empty")], capture_output=True, text=True, env=env,
                           timeout=300)
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1 and "nothing to report" in empty.stderr, empty.stderr


def test_file_backed_sets_decode_only_the_images_shown(shared_data: Path, tmp_path: Path) -> None:
    from folders import tiny_folder

    from coreset.reporting.figures import FILE_IMAGE_SIZE, Sources

    folder = tiny_folder(shared_data, tmp_path / "tiny")
    cfg = synthetic_study("files", "data.name=imagefolder", f"data.root={folder}", "data.max_decoded_gb=0",
                          f"data.cache_dir={tmp_path / 'cache'}")
    src = Sources(cfg, StudyRoot(str(tmp_path / "study")))
    assert not isinstance(src.datasets, str) and not src.datasets.train.in_memory
    pixels, names = src.images(np.array([0, 5]))
    assert pixels.shape == (2, 3, FILE_IMAGE_SIZE, FILE_IMAGE_SIZE) and pixels.dtype == np.uint8  # NCHW
    assert names == [src.datasets.train.classes[0], src.datasets.train.classes[1]]
    missing = Sources(synthetic_study("gone", "data.name=imagefolder", f"data.root={tmp_path / 'nowhere'}"),
                      StudyRoot(str(tmp_path / "study")))
    assert missing.images(np.array([0])).startswith("images not shown: ")


def test_sweep_table_has_a_row_per_setting_and_names_the_best(tmp_path: Path) -> None:
    """Issue 14: accuracy against a swept setting, a row per instance in the config's order,
    Random's for reference, the best setting per fraction; the accuracy table starts with the
    full-data row."""
    cfg = _cfg("score.methods=[random, gradsimcore]",
               "score.sweep={gradsimcore: [{threshold_quantile: 0.99}, {threshold_quantile: 0.5}, "
               "{threshold_quantile: 0.9}, {threshold: 0.95}]}")
    acc = {("gradsimcore@threshold_quantile=0.99", 0.05): (0.30, 0.34), ("gradsimcore@threshold_quantile=0.5", 0.05):
           (0.50, 0.52), ("gradsimcore@threshold_quantile=0.99", 0.2): (0.80, 0.82),
           ("gradsimcore@threshold_quantile=0.5", 0.2): (0.70, 0.70), ("random", 0.05): (0.4, 0.4),
           ("random", 0.2): (0.75, 0.77), ("full", 1.0): (0.9, 0.92), ("gradsimcore", 0.05): (0.45, 0.47),
           ("gradsimcore", 0.2): (0.85, 0.87)}  # gradsimcore: the configured Φ (0.9), the method's own name
    rows = [{"method": m, "fraction": f, "seed": s, "source_model": "mlp", "target_model": "mlp", "n_train": 10,
             "test_acc": a, "best_test_acc": a, "final_test_acc": a, "val_acc": float("nan"), "best_step": 6,
             "epochs": 1.0, "steps": 6, "policy": "steps", "wall_s": 1.0, "config": "{}"}
            for (m, f), accs in acc.items() for s, a in enumerate(accs)]
    root = StudyRoot(str(tmp_path / "study"))
    write_table(root, layout.ACCURACY, pd.DataFrame(rows), "accuracy")
    main, sweep, _ = report.accuracy_tables(cfg, root)
    assert main.frame.method.tolist() == ["full", "random", "gradsimcore@threshold_quantile=0.99",
                                          "gradsimcore@threshold_quantile=0.5", "gradsimcore"]
    frame = sweep.frame
    assert frame.method.tolist() == ["gradsimcore"] * 3 + ["random", "best setting"]  # no rows yet for Φ=0.95
    assert frame.threshold_quantile.tolist() == ["0.99", "0.5", "0.9", "", ""] and frame.threshold.eq("").all()
    assert frame["0.05"].tolist()[:4] == ["32.00 ± 2.83", "51.00 ± 1.41", "46.00 ± 1.41", "40.00 ± 0.00"]
    assert frame.iloc[-1][["0.05", "0.2"]].tolist() == ["threshold_quantile=0.5", "threshold_quantile=0.9"]
    published = pd.read_csv(tmp_path / "study" / "report" / "sweep_gradsimcore.csv")
    assert len(published) == 5


def test_replicas_give_the_spread_over_source_models(study: StudyRoot, tmp_path: Path) -> None:
    """Issue 14: ``--replicas`` roots (the study with another ``train.seed``) add the spread over
    source models; a replica of another study or of the same source seed is refused."""
    from coreset.cli import record_config
    from coreset.config import load_config

    cfg = _cfg()
    record_config(cfg, study)
    replica = StudyRoot(str(tmp_path / "replica"))
    shutil.copytree(study.path(""), replica.path(""))
    replica.delete(layout.CONFIG)
    record_config(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=7)), replica)
    accuracy = read_table(replica, layout.ACCURACY, "accuracy")
    write_table(replica, layout.ACCURACY, accuracy.assign(test_acc=accuracy.test_acc - 0.1), "accuracy")
    result = report.write_report(cfg, study, replicas=(replica,))
    assert result.drawn == ["source_spread"]
    spread = pd.read_csv(Path(study.path(layout.report_file("source_spread.csv"))))
    assert (spread.source_seeds == 2).all() and spread.source_std.to_numpy() == pytest.approx(0.1 / np.sqrt(2))
    with pytest.raises(StageError, match="from the same seed 0"):
        report.write_report(cfg, study, replicas=(study,))
    other = load_config(None, ["name=report", "model.name=linear"])
    replica.delete(layout.CONFIG)
    record_config(other, replica)
    with pytest.raises(UserError, match="holds a study with"):
        report.write_report(cfg, StudyRoot(study.path("")), replicas=(replica,))
