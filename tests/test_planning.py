"""The plan (``--plan``): work units counted from the config and the data before anything
ran, what the root already holds, estimates as counts times measured rates, calibration on
real batches, and the job flag that writes nothing."""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from studies import synthetic_study

from coreset import layout, placement
from coreset.calibrate import calibrate, sharing
from coreset.cli import parse_job_args
from coreset.config import method_of
from coreset.data import load_datasets
from coreset.planning import Counts, format_plan, plan_frame, plan_study
from coreset.rates import Rate, read_rates, record_rates
from coreset.stages import gradients, retrain, score
from coreset.stages.train import train_source
from coreset.storage import StudyRoot
from coreset.tables import write_table

REPO = Path(__file__).resolve().parents[1]
STAGES = ["train", "gradients", "score", "retrain", "report"]
CPU2 = {"CPU": 2.0, "GPU": 0.0}


def _study(*extra: str):
    return synthetic_study("plan", "train.epochs=2", "data.synthetic_size=600", "data.synthetic_classes=4",
                           "gradients.shard_size=200", "gradients.factor_epochs=[1,2]",
                           "score.methods=[random,max_gradient,gradsimcore]", "score.fractions=[0.1,0.5]",
                           "score.seeds=[0,1]", "retrain.policy=steps", "retrain.steps=7", "retrain.evaluations=1",
                           "retrain.full_data=true", *extra)


def _rates(device: str = "cpu") -> dict[str, Rate]:
    keys = {"train.image": "image", "train.start": "start", "gradients.final_row": "row",
            "gradients.factor_row": "row", "gradients.start": "start", "score.random": "row",
            "score.max_gradient": "row", "score.gradsimcore": "class", "score.start": "start",
            "retrain.mnist_cnn.step": "step", "retrain.start": "start", "retrain.pack_start": "pack",
            "report.figure": "figure"}
    return {k: Rate(0.01 * (i + 1), per, device, 1) for i, (k, per) in enumerate(keys.items())}


def test_fresh_root_is_planned_from_the_config_and_the_data_and_nothing_is_written(tmp_path: Path) -> None:
    cfg = _study()
    root = StudyRoot(str(tmp_path / "root"))
    datasets = load_datasets(cfg.data)
    counts = Counts.of(cfg, root, datasets)
    rows = {(r.stage, r.unit): r for r in plan_study(cfg, root, STAGES, counts, CPU2, _rates())}
    assert not (tmp_path / "root").exists()

    n_train = len(counts.train)
    assert n_train == 600 - round(cfg.data.val_fraction * 600)
    assert rows["train", "source epoch"].units == 2 and rows["train", "source epoch"].done == 0
    shards = gradients.class_shards(counts.train.index.to_numpy(), counts.train.to_numpy(), 200)
    final, factor = rows["gradients", "shard x final checkpoint"], rows["gradients", "shard x factor checkpoint"]
    assert (final.units, factor.units) == (len(shards), len(shards))  # epoch 2 is final; epoch 1 factors only
    classes = score.class_units({"shard_labels": gradients.shard_labels(shards, counts.train)})
    assert rows["score", "class task: gradsimcore"].units == len(classes)
    assert rows["score", "whole table: random"].units == 1
    assert rows["retrain", "trial"].units == len(retrain.trial_grid(cfg)) == 3 * 2 * 2 + 2

    # Estimates are counts times the rates: the train stage's start plus its epochs at once each.
    r = _rates()
    train = rows["train", "source epoch"]
    assert train.wall_s == pytest.approx(r["train.start"].seconds + 2 * n_train * r["train.image"].seconds)
    gsc = rows["score", "class task: gradsimcore"]
    assert gsc.seconds_each == pytest.approx(r["score.gradsimcore"].seconds * 4 / len(classes))
    assert gsc.parallel == placement.score_unit(CPU2).parallel == 2
    assert placement.score_unit(CPU2).ray_options() == {"num_cpus": 1.0}
    assert placement.score_unit({"CPU": 8.0, "GPU": 2.0}).ray_options() == {"num_gpus": 1.0}
    assert placement.gradients(cfg, {"CPU": 8.0, "GPU": 2.0}, 9).ray_options() == {"num_cpus": 1.0, "num_gpus": 1.0}
    trial = rows["retrain", "trial"]
    packs = retrain.trial_packs(cfg, retrain.trial_grid(cfg), n_train, trial.parallel)
    assert len(packs) == 7  # 14 trials, 2 slots: four packs a slot of at most 2 trials
    per_trial = 7 * r["retrain.mnist_cnn.step"].seconds + r["retrain.pack_start"].seconds * 7 / 14
    assert trial.seconds_each == pytest.approx(per_trial)  # each pack starts its own worker
    assert trial.wall_s == pytest.approx(r["retrain.start"].seconds
                                         + math.ceil(trial.units / trial.parallel) * trial.seconds_each)
    assert all(row.rate == "recorded" and row.gpu_hours == 0 for row in rows.values())


def test_rates_of_another_device_give_no_estimate_and_the_total_says_so(tmp_path: Path) -> None:
    cfg = _study()
    root = StudyRoot(str(tmp_path))
    counts = Counts.of(cfg, root, load_datasets(cfg.data))
    gpus = {"CPU": 8.0, "GPU": 2.0}
    rows = plan_study(cfg, root, STAGES, counts, gpus, _rates("cpu"))
    by_stage = {r.stage: r for r in rows}
    assert by_stage["gradients"].gpus == 1 and by_stage["gradients"].seconds_each is None
    assert by_stage["gradients"].rate == "none"
    lines = format_plan(rows, gpus)
    assert "no measured rate for" in lines[-1] and "gradients" in lines[-1] and "--calibrate" in lines[-1]
    assert "measured when it first runs" in format_plan(rows, gpus, calibrated=True)[-1]
    frame = plan_frame(rows)
    assert frame.wall_s.isna().any() and list(frame.stage.unique()) == STAGES


def test_done_work_is_counted_from_the_root(tmp_path: Path) -> None:
    cfg = _study("train.epochs=1", "gradients.factor_epochs=[1]")
    root = StudyRoot(str(tmp_path))
    train_source(cfg, root)
    counts = Counts.of(cfg, root, load_datasets(cfg.data))
    assert counts.split.equals(pd.read_parquet(tmp_path / layout.SPLIT))  # the recorded split, not a new draw
    rows = plan_study(cfg, root, ["train", "gradients"], counts, CPU2, _rates())
    assert (rows[0].units, rows[0].done, rows[0].wall_s) == (1, 1, 0.0)
    assert [r.unit for r in rows[1:]] == ["shard x final checkpoint"] and rows[1].done == 0


def test_early_stopping_trials_are_timed_at_the_share_of_their_maximum_that_finished_ones_ran(
        tmp_path: Path) -> None:
    cfg = _study("retrain.policy=early_stopping", "retrain.steps=40", "retrain.validate_every=10",
                 "retrain.patience=1", "retrain.batch_size=32",
                 "score.sweep={gradsimcore: {threshold_quantile: [0.5, 0.9]}}")  # 0.9: the plain name
    root = StudyRoot(str(tmp_path))
    datasets = load_datasets(cfg.data)
    counts = Counts.of(cfg, root, datasets)
    n_train, r = len(counts.train), _rates()

    def most(trial: retrain.Trial) -> int:
        intervals, per = retrain.schedule(cfg, retrain.trial_images(trial, n_train))
        return intervals * per  # what retrain.trial_steps gives, worked out here from the schedule

    def seconds_each(trials: list[retrain.Trial], shares: list[float]) -> float:
        """Steps at the rate, and each trial's part of its pack's start."""
        packs = len(retrain.trial_packs(cfg, trials, n_train, 2))
        steps = np.mean([most(t) * share for t, share in zip(trials, shares, strict=True)])
        return steps * r["retrain.mnist_cnn.step"].seconds + r["retrain.pack_start"].seconds * packs / len(trials)

    grid = retrain.trial_grid(cfg)
    fresh = plan_study(cfg, root, ["retrain"], counts, CPU2, r)[0]
    assert fresh.seconds_each == pytest.approx(seconds_each(grid, [1.0] * len(grid)))
    assert "at their maximum" in fresh.note and fresh.note in "\n".join(format_plan([fresh], CPU2))

    # A real trial's row, written as the stage writes it, with the steps each finished trial ran:
    # the full data a quarter of its maximum, each method at 10% (seed 0) its own share.
    split = counts.split
    full = retrain.Trial("full", 1.0, 0, "mnist_cnn")
    row = retrain.retrain(cfg, datasets, full, np.sort(split.sample_id[split.split == "train"].to_numpy()),
                          val_ids=np.sort(split.sample_id[split.split == "val"].to_numpy()))
    work = retrain.plan(cfg, root)
    ran = {"full": 0.25, "random": 0.5, "max_gradient": 0.75, "gradsimcore": 1.0}
    finished = {t: int(most(t) * ran[t.method]) for t in grid
                if t.seed == 0 and (t.method == "full" or (t.fraction == 0.1 and t.method in ran))}
    for trial, steps in finished.items():
        written = {**row, **dataclasses.asdict(trial), "steps": steps}
        write_table(root, work.row_path(trial), pd.DataFrame([written]), "accuracy")
    share = {t: steps / most(t) for t, steps in finished.items()}
    everyone = np.mean(list(share.values()))

    def expected(trial: retrain.Trial) -> float:
        """Its method's (a swept setting: its method's) at its fraction, else the mean of all:
        no 0.5 trial has finished."""
        same = [v for t, v in share.items() if t.method == method_of(trial.method) and t.fraction == trial.fraction]
        return float(np.mean(same)) if same else everyone

    pending = [t for t in grid if t not in finished]
    assert {t.method for t in pending} >= {"gradsimcore@threshold_quantile=0.5"}
    resumed = plan_study(cfg, root, ["retrain"], counts, CPU2, r)[0]
    assert resumed.done == len(finished) == 4
    assert resumed.seconds_each == pytest.approx(seconds_each(pending, [expected(t) for t in pending]))
    assert expected(retrain.Trial("gradsimcore@threshold_quantile=0.5", 0.1, 1, "mnist_cnn")) > 0.9
    assert "that the finished ones ran" in resumed.note


def test_recorded_rates_merge_and_round_trip(tmp_path: Path) -> None:
    root = StudyRoot(str(tmp_path))
    assert read_rates(root) == {}
    record_rates(root, {"a": Rate(1.0, "row", "cpu", 2), "b": Rate(2.0, "step", "cpu", 1)})
    record_rates(root, {"b": Rate(3.0, "step", "cuda", 1)})
    assert read_rates(root) == {"a": Rate(1.0, "row", "cpu", 2), "b": Rate(3.0, "step", "cuda", 1)}


def test_stage_rates_from_what_a_run_measured() -> None:
    unit = placement.Placement(2, 1.0, 0.0, 1)
    ids = np.arange(10)
    times = [(gradients.ShardTask(2, 0, ids, True), 4.0), (gradients.ShardTask(1, 0, ids, False), 1.0),
             (gradients.ShardTask(1, 1, ids[:5], False), 0.5)]
    rates = gradients.measured_rates(times, stage_s=10.0, unit=unit)
    assert rates["gradients.final_row"].seconds == pytest.approx(0.4)
    assert rates["gradients.factor_row"].seconds == pytest.approx(1.5 / 15)
    assert rates["gradients.start"].seconds == pytest.approx(10.0 - 5.5 / 2)
    cfg = _study()
    by_class = score.MethodWork("gradsimcore", score.build_method(cfg, "gradsimcore", 2), {}, False)
    whole = score.MethodWork("random", score.build_method(cfg, "random", 2), {}, False)
    scored = pd.DataFrame({"sample_id": [4, 1, 9, 7], "label": [0, 0, 3, 1], "score": [0.1, 0.2, 0.3, 0.4]})
    # per class: the classes scored (labels need not be contiguous in a shard), not a label range
    assert score.measured_rates(by_class, scored, 6.0, unit)["score.gradsimcore"].seconds == pytest.approx(2.0)
    assert score.measured_rates(whole, scored, 6.0, unit)["score.random"].seconds == pytest.approx(1.5)
    rows = pd.DataFrame({"target_model": ["m", "m"], "steps": [10, 30], "wall_s": [2.0, 6.0]})
    rates = retrain.measured_rates(rows, stage_s=9.0, unit=unit, tune_start_s=2.0, packs=2)
    assert rates["retrain.m.step"].seconds == pytest.approx(0.2)
    assert rates["retrain.start"].seconds == pytest.approx(2.0)
    assert rates["retrain.pack_start"].seconds == pytest.approx(9.0 - 2.0 - 8.0 / 2)  # two packs at once: one round
    one_pack = retrain.measured_rates(rows, stage_s=12.0, unit=unit, tune_start_s=2.0, packs=1)
    assert one_pack["retrain.pack_start"].seconds == pytest.approx(12.0 - 2.0 - 8.0)  # both trials in one process
    assert set(retrain.measured_rates(rows, 9.0, unit, tune_start_s=None, packs=2)) == {"retrain.m.step"}  # restored


def test_calibration_measures_every_stage_on_real_batches(tmp_path: Path) -> None:
    cfg = _study()
    datasets = load_datasets(cfg.data)
    counts = Counts.of(cfg, StudyRoot(str(tmp_path)), datasets)
    rates = calibrate(cfg, datasets, counts.split, ["train", "gradients", "score", "retrain"], CPU2, load_s=0.1)
    assert set(rates) == set(_rates()) - {"report.figure"}
    assert all(r.source == "calibrated" and r.device == "cpu" and r.seconds > 0 for r in rates.values())
    assert rates["score.gradsimcore"].per == "class" and rates["score.random"].per == "row"
    assert rates["train.start"].seconds > 0.1  # the worker's imports, measured in a child interpreter
    # A final row costs at least a factor-only row (every norm on top of the factors).
    assert rates["gradients.final_row"].seconds >= 0.5 * rates["gradients.factor_row"].seconds


def _job(*args: str, root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sets = ["data.name=synthetic", "train.probe_size=8", "score.methods=[random,gradsimcore]",
            "score.fractions=[0.05]", "score.seeds=[0]"]
    smoke = str(REPO / "jobs/configs/smoke.yaml")
    return subprocess.run([sys.executable, str(REPO / "jobs/study.py"), "--config", smoke, "--root", str(root), *args,
                           "--set", *sets],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


def test_plan_job_prints_and_writes_the_plan_and_touches_no_root(tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "plan.csv"
    proc = _job("--plan", "--calibrate", "--plan-out", str(out), root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not root.exists()
    assert "estimated wall time" in proc.stdout and "Traceback" not in proc.stderr
    frame = pd.read_csv(out)
    assert list(frame.stage.unique()) == STAGES
    ran = frame[frame.stage != "report"]
    assert ran.wall_s.gt(0).all() and ran.rate.eq("calibrated").all()
    assert frame[frame.stage == "report"].rate.eq("none").all()  # no figure drawn here yet: no rate


@pytest.mark.parametrize("args, message", [
    (("--plan-out", "x.csv"), "--plan-out needs --plan"),
    (("--calibrate",), "--calibrate needs --plan"),
    (("--plan", "--plan-out", "x.txt"), "name a .parquet or .csv file"),
    (("--plan", "--plan-out", "/no/such/dir/x.csv"), "folder /no/such/dir does not exist"),
])
def test_plan_flags_refused_with_one_line(tmp_path: Path, args: tuple[str, ...], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", str(REPO / "jobs/configs/smoke.yaml"), "--root", str(tmp_path / "root"), *args]
    with pytest.raises(SystemExit) as stop:
        parse_job_args("a job", argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "root").exists()


def test_calibration_runs_as_many_units_at_once_as_share_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert sharing(placement.Placement(2, 1.0, 0.0, 1)) == 2  # two 1-CPU class tasks on 2 CPUs
    assert sharing(placement.Placement(8, 1.0, 0.0, 1)) == 2  # a cluster's others run on other nodes
    assert sharing(placement.Placement(2, 2.0, 0.0, 2)) == 1
    assert sharing(placement.Placement(4, 1.0, 1.0, 1)) == 1  # a GPU unit has its device to itself
