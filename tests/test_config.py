"""Study configs: typed loading, overrides, and one-line errors at load time."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coreset.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_load() -> None:
    for path in sorted((REPO / "jobs" / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.name


def test_overrides_are_typed() -> None:
    cfg = load_config(REPO / "jobs/configs/mnist.yaml", ["train.epochs=3", "train.lr=1e-2", "data.augment=false",
                                                       "train.milestones=[1, 2]"])
    assert cfg.train.epochs == 3 and cfg.train.lr == pytest.approx(0.01)
    assert cfg.data.augment is False and cfg.train.milestones == (1, 2)


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=-1", "train.epochs must be >= 1"),
    ("train.epochs=three", "train.epochs must be an integer"),
    ("data.name=imagenet21k", "data.name='imagenet21k' is not allowed; allowed: mnist"),
    ("model.name=resnet9000", "model.name='resnet9000' is not allowed; allowed: alexnet"),
    ("train.bogus=1", "unknown key train.bogus; allowed:"),
    ("bogus.key=1", "unknown key bogus"),
    ("data.val_fraction=1.5", "data.val_fraction must lie in"),
    ("train.momentum=1.0", "train.momentum must lie in"),
    ("train.schedule=linear", "train.schedule='linear' is not allowed; allowed: cosine, step, constant"),
    ("train.milestones=[500]", "train.milestones must lie in"),
    ("score.methods=[random, bogus]", "score.methods='bogus' is not allowed; allowed: cal, ccs, contextual_diversity"),
    ("score.norm=l3_all", "score.norm must be <l1|l2|linf>_<last|weights|biases|all>"),
    ("score.drop_fraction=0.2", "unknown key score.drop_fraction; did you mean "
                                "score.params.nonextreme_max_gradient.drop_fraction?"),
    ("score.params.gradsimcore.threshold=1.5", "score.params.gradsimcore.threshold must lie in [-1.0, 1.0]"),
    ("score.params.gradsimcore.backend=annoy", "score.params.gradsimcore.backend='annoy' is not allowed; "
                                               "allowed: auto"),
    ("score.params.gradsimcore.phi=0.5", "unknown key score.params.gradsimcore.phi; allowed: backend, threshold, "
                                         "threshold_quantile"),
    ("score.params.random.epoch=3", "unknown key score.params.random.epoch; allowed: none"),
    ("score.params.gradsim.threshold=0.5", "score.params='gradsim' is not allowed"),
    ("gradients.factor_epochs=[]", "gradsimcore needs gradients.factor_epochs"),
    ("train.seed=-1", "train.seed must be >= 0"),
    ("retrain.validate_epochs=-0.5", "retrain.validate_epochs must be >= 0"),
    ("retrain.policy=forever", "retrain.policy='forever' is not allowed; allowed: epochs, steps, early_stopping"),
    ("score.sweep={herding: {x: [1]}}", "score.sweep.herding: 'herding' is not one of score.methods"),
    ("score.sweep={gradsimcore: {phi: [0.5]}}", "score.sweep.gradsimcore='phi' is not allowed; allowed: threshold,"),
    ("score.sweep={gradsimcore: {threshold_quantile: []}}", "score.sweep.gradsimcore.threshold_quantile must be a "
                                                            "non-empty list"),
    ("score.sweep={gradsimcore: {threshold_quantile: [0.5, 0.50]}}", "score.sweep.gradsimcore lists the setting "
                                                                     "'gradsimcore@threshold_quantile=0.5' twice"),
    ("score.sweep={gradsimcore: [{threshold: 0.2}, {phi: 1}]}", "score.sweep.gradsimcore='phi' is not allowed"),
    ("score.sweep={gradsimcore: [{threshold_quantile: 0.9}, {backend: auto}]}",
     "score.sweep.gradsimcore lists the setting 'gradsimcore' twice (threshold_quantile=0.9 and backend=auto)"),
    ("score.sweep={gradsimcore: [{threshold: 0.2}, 0.5]}", "score.sweep.gradsimcore must map parameter names"),
    ("score.sweep={gradsimcore: {threshold_quantile: [0.5, 1.5]}}", "score.sweep.gradsimcore.threshold_quantile "
                                                                    "must lie in [0.0, 1.0], got 1.5"),
    ("score.sweep={gradsimcore: [0.5]}", "score.sweep.gradsimcore must map parameter names to lists of values"),
    ("retrain.methods=[gradsimcore@threshold_quantile=0.5]", "retrain.methods names 'gradsimcore@threshold_quantile"),
])
def test_bad_values_fail_at_load(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "jobs/configs/mnist.yaml", [override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_job_exits_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "jobs/train.py"),
                           "--config", str(REPO / "jobs/configs/mnist.yaml"),
                           "--root", str(tmp_path / "root"), "--set", "train.epochs=0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.epochs must be >= 1, got 0"
    assert not (tmp_path / "root").exists()


def test_root_of_another_study_is_refused(tmp_path: Path) -> None:
    from coreset.cli import record_config
    from coreset.storage import StudyRoot

    root = StudyRoot(str(tmp_path))
    record_config(load_config(REPO / "jobs/configs/mnist.yaml"), root)
    with pytest.raises(ConfigError, match="holds a study with model.name='mnist_cnn'"):
        record_config(load_config(REPO / "jobs/configs/mnist.yaml", ["model.name=linear"]), root)
    with pytest.raises(ConfigError, match="holds a study with train.seed=None, not 1"):  # one source model a root
        record_config(load_config(REPO / "jobs/configs/mnist.yaml", ["train.seed=1"]), root)


def test_the_source_seed_is_the_studys_unless_train_seed_sets_it() -> None:
    from coreset.stages.train import source_seed

    assert source_seed(load_config(REPO / "jobs/configs/mnist.yaml", ["seed=3"])) == 3
    assert source_seed(load_config(REPO / "jobs/configs/mnist.yaml", ["seed=3", "train.seed=0"])) == 0


def test_method_parameters_come_from_their_declarations() -> None:
    """``score.params.<method>`` sets a method's declared parameters; the rest keep its defaults."""
    from coreset.methods.gradsimcore import DEFAULT_QUANTILE

    cfg = load_config(REPO / "jobs/configs/mnist.yaml", ["score.params.nonextreme_max_gradient.drop_fraction=0.2",
                                                       "score.params.gradsimcore.threshold=0.25"])
    assert cfg.score.method_params("nonextreme_max_gradient").drop_fraction == 0.2
    g = cfg.score.method_params("gradsimcore")
    assert (g.threshold, g.threshold_quantile, g.backend) == (0.25, DEFAULT_QUANTILE, "auto")
    assert load_config(REPO / "jobs/configs/smoke.yaml").score.method_params("gradsimcore").threshold is None


def test_literal_fields_are_checked_also_when_built_in_code() -> None:
    import dataclasses

    cfg = load_config(REPO / "jobs/configs/mnist.yaml")
    bad = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, schedule="linear"))
    with pytest.raises(ConfigError, match="train.schedule='linear' is not allowed"):
        bad.validate()


def test_a_sweep_names_one_instance_per_value_and_retrains_each() -> None:
    """Issue 14: ``score.sweep`` makes one method instance per combination of values; the
    retraining grid takes each, and a method named in ``retrain.methods`` takes all of its."""
    from coreset.stages.retrain import trial_grid

    sweep = "score.sweep={gradsimcore: {threshold_quantile: [0.5, 0.99], threshold: [null, 0.2]}}"
    cfg = load_config(REPO / "jobs/configs/mnist.yaml", [sweep, "score.params.gradsimcore.backend=gram"])
    swept = [i for i in cfg.score.instances if i.startswith("gradsimcore")]
    assert swept == ["gradsimcore@threshold_quantile=0.5,threshold=None",
                     "gradsimcore@threshold_quantile=0.5,threshold=0.2",
                     "gradsimcore@threshold_quantile=0.99,threshold=None",
                     "gradsimcore@threshold_quantile=0.99,threshold=0.2"]
    p = cfg.score.method_params(swept[1])
    assert (p.threshold_quantile, p.threshold, p.backend) == (0.5, 0.2, "gram")  # params stay under the sweep
    assert cfg.score.instance_setting("max_gradient") == {}
    with pytest.raises(ConfigError, match="not a method instance of this study"):
        cfg.score.instance_setting("gradsimcore")
    only = load_config(REPO / "jobs/configs/mnist.yaml", [sweep, "retrain.methods=[random, gradsimcore]"])
    assert {t.method for t in trial_grid(only)} == {"random", "full", *swept}
    listed = load_config(REPO / "jobs/configs/mnist.yaml",
                         ["score.sweep={gradsimcore: [{threshold_quantile: 0.9}, {threshold: 0.5}]}"])
    assert listed.score.instances[-2:] == ("gradsimcore", "gradsimcore@threshold=0.5")  # 0.9: the configured Φ
    assert listed.score.instance_setting("gradsimcore") == {"threshold_quantile": 0.9}
    assert listed.score.method_params("gradsimcore@threshold=0.5").threshold == 0.5
    one = load_config(REPO / "jobs/configs/mnist.yaml", [sweep, f"retrain.methods=['{swept[2]}']"])  # quoted: a comma
    assert {t.method for t in trial_grid(one)} == {swept[2], "full"}
