"""A study is one YAML file, loaded into typed, validated, frozen config objects.

Validation happens at load time, so a typo or an impossible value fails before any
cluster work starts, with one line naming the key and what is allowed. Command-line
overrides use dotted keys: ``--set train.epochs=3 data.root=/data``; values are parsed
as YAML scalars.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from coreset.config_engine import (
    allowed,
    apply_override,
    at_least,
    build,
    check_literals,
    choice,
    in_range,
    read_yaml_mapping,
    to_plain,
)
from coreset.errors import ConfigError

__all__ = ["ConfigError", "DataConfig", "GradientsConfig", "ModelConfig", "RetrainConfig", "ScoreConfig",
           "StudyConfig", "TrainConfig", "config_from_dict", "load_config"]

DatasetName = Literal["mnist", "fashion_mnist", "idx", "cifar10", "cifar100", "imagefolder", "synthetic"]
DATASETS = allowed(DatasetName)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how the train split is cut.

    ``root`` is a directory holding the dataset in torchvision's layout, the four official
    IDX files (``.gz`` or not, in ``root`` or ``root/<name>``) of mnist, fashion_mnist or
    any ``idx`` set, an ImageFolder tree (``train/`` and ``val/`` or ``test/``), or an
    archive of one (``.tar.gz``), or a pack of any of these (``jobs/pack.py``; a local path or
    ``s3://``, ``gs://``); the shared ``../shared/data`` folder works for mnist and cifar10 (JPEG).
    Nothing is downloaded unless ``download`` is true.

    ``name: idx`` loads any dataset shipped as IDX files (KMNIST; EMNIST, whose names carry
    a prefix such as ``emnist-balanced-``, one set per folder): IDX files hold no class
    names, so ``classes`` names them (label ``i`` is ``classes[i]``; every label in the files
    must have a name). ``transpose`` swaps rows and columns of each image, for EMNIST, which
    stores its images transposed.

    ``corrupt`` says what an image PIL cannot decode (truncated, garbled, empty, not an
    image) does to a folder dataset: ``fail`` (default) stops the job with one line naming
    the file; ``skip`` leaves it out before sample ids are assigned (ids stay the sorted
    order of the readable files, identical on every run) and source training records it in
    ``source/skipped_files.parquet``. Decoded sets (up to ``max_decoded_gb``) decode every
    file when they load, so the policy is exact. File-backed sets (ImageNet size) check only
    each file's header when they load (~40 µs a file, cached per listing); damage past the
    header is found when a loader worker decodes the file, and stops the job with one line
    naming it under either policy (skipping then would renumber the ids mid-study).
    """

    name: DatasetName = "mnist"
    root: str = "../shared/data"
    download: bool = False
    val_fraction: float = 0.1
    augment: bool = True
    image_size: int = 0  # 0: the dataset's native size (folders: 224)
    cache_dir: str = ""  # where archives are extracted; default ~/.cache/coreset
    max_decoded_gb: float = 4.0  # folder datasets up to this size are decoded once into memory
    loader_workers: int = 2
    # A shuffled epoch over a streaming pack reads runs of ``shuffle_chunk`` consecutive images
    # (one request each: ~7 MB of ImageNet JPEGs) in a random order over every shard, and draws
    # each batch from a buffer of ``shuffle_buffer`` decoded images (README "Shuffling a streamed
    # pack"): 16k holds 256 runs from ~230 of ImageNet's 1000 classes, 2.4 GB at 224 px.
    shuffle_buffer: int = 16_384
    shuffle_chunk: int = 64
    corrupt: Literal["fail", "skip"] = "fail"  # unreadable images: stop naming the file, or leave them out
    synthetic_size: int = 512  # train images of the synthetic set
    synthetic_classes: int = 4
    classes: tuple[str, ...] = ()  # data.name=idx: the class names, label i is classes[i]
    transpose: bool = False  # data.name=idx: images stored transposed (EMNIST)

    def validate(self) -> None:
        check_literals(self, "data.")
        in_range("data.val_fraction", self.val_fraction, 0.0, 0.9, lo_open=False)
        at_least("data.image_size", self.image_size, 0)
        at_least("data.loader_workers", self.loader_workers, 0)
        at_least("data.shuffle_buffer", self.shuffle_buffer, 1)
        at_least("data.shuffle_chunk", self.shuffle_chunk, 1)
        at_least("data.synthetic_size", self.synthetic_size, 8)
        at_least("data.synthetic_classes", self.synthetic_classes, 2)
        if self.max_decoded_gb < 0:
            raise ConfigError(f"data.max_decoded_gb must be >= 0, got {self.max_decoded_gb}")
        if self.name == "idx" and not self.classes:
            raise ConfigError("data.name=idx needs data.classes: the class names, label i is classes[i]")
        if self.name != "idx" and (self.classes or self.transpose):
            raise ConfigError(f"data.classes and data.transpose apply only to data.name=idx, not {self.name}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"data.classes must name each class once, got {list(self.classes)}")


@dataclass(frozen=True)
class ModelConfig:
    """The source model, looked up by name in :data:`coreset.models.MODELS`."""

    name: str = "mnist_cnn"
    pretrained: bool = False

    def validate(self) -> None:
        from coreset.models import MODELS

        choice("model.name", self.name, tuple(MODELS.names()))


@dataclass(frozen=True)
class TrainConfig:
    """Source training: SGD with momentum and weight decay (DeepCore-like defaults).

    ``seed`` seeds only the source model (its initialisation and batch order). Studies that
    differ in it alone share the split, the probe images and every selection and retraining
    seed, so the spread of their results is the source model's: the paper's orderings depend
    on it (two MNIST source models that differed at float precision gave Max-Gradient's 0.3%
    subsets 29.7% and 37.9%). Run the study again into another root with
    ``--set train.seed=1`` to measure it.
    """

    epochs: int = 200
    batch_size: int = 128
    eval_batch_size: int = 1024
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[int, ...] = ()  # step schedule: epochs at which lr *= gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
    early_stopping_patience: int = 0  # epochs without validation gain before stopping; 0: off
    probe_size: int = 512  # training images whose gradient norms are tracked every epoch
    workers: int = 1  # data-parallel Ray Train workers (1: a single process)
    cpus_per_worker: int = 0  # 0: all CPUs of the node divided by workers
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    amp: bool = True  # bfloat16 autocast on CUDA (coreset.devices.autocast); ignored on CPU
    seed: int | None = None  # the source model's initialisation and batch order; None: the study's seed

    def validate(self) -> None:
        at_least("train.epochs", self.epochs, 1)
        if self.seed is not None:
            at_least("train.seed", self.seed, 0)
        at_least("train.batch_size", self.batch_size, 1)
        at_least("train.eval_batch_size", self.eval_batch_size, 1)
        check_literals(self, "train.")
        in_range("train.lr", self.lr, 0.0, 10.0)
        in_range("train.momentum", self.momentum, 0.0, 1.0, lo_open=False, hi_open=True)
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule == "step" and not self.milestones:
            raise ConfigError("train.milestones must list at least one epoch when train.schedule is 'step'")
        if any(m < 1 or m > self.epochs for m in self.milestones):
            raise ConfigError(f"train.milestones must lie in [1, train.epochs={self.epochs}], "
                              f"got {list(self.milestones)}")
        in_range("train.gamma", self.gamma, 0.0, 1.0, hi_open=False)
        in_range("train.warmup_epochs", self.warmup_epochs, 0, self.epochs - 1, lo_open=False, hi_open=False)
        at_least("train.early_stopping_patience", self.early_stopping_patience, 0)
        at_least("train.probe_size", self.probe_size, 0)
        at_least("train.workers", self.workers, 1)
        at_least("train.cpus_per_worker", self.cpus_per_worker, 0)


@dataclass(frozen=True)
class GradientsConfig:
    """Per-sample gradient tables: which norms at the trained model, which checkpoints' factors.

    ``final_epoch`` is the trained model scored by the magnitude methods: ``"best"`` (the
    best validation epoch, the paper's early stopping), ``"last"``, or an epoch number.
    ``factor_epochs`` are the early checkpoints whose last-layer factors (``err``, ``emb``)
    GradSimCore aggregates (its paper: the first 5-10 epochs).
    """

    norms: tuple[str, ...] = ("l2",)
    groups: tuple[str, ...] = ("last", "weights", "biases", "all")
    final_epoch: str = "best"
    factor_epochs: tuple[int, ...] = (1, 2, 3, 4, 5)
    factor_dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = 256
    shard_size: int = 8192  # images per shard file (the unit of resumption)
    workers: int = 0  # Ray actors; 0: one per GPU, else one per `cpus_per_worker` CPUs
    cpus_per_worker: int = 2
    chunk_mb: int = 256  # scratch memory bound of l1/linf materialisation per layer
    amp: bool = False  # bfloat16 autocast on CUDA for the backward (norms stay float32)
    bound_batches: int = 32  # random minibatches for the batch-gradient bound (paper Fig. 1)
    bound_batch_size: int = 128

    def validate(self) -> None:
        from coreset.gradients.last_layer import NORMS
        from coreset.gradients.spec import GROUPS

        check_literals(self, "gradients.")
        for n in self.norms:
            choice("gradients.norms", n, NORMS)
        for g in self.groups:
            choice("gradients.groups", g, GROUPS)
        if self.final_epoch not in ("best", "last") and not self.final_epoch.isdigit():
            raise ConfigError(f"gradients.final_epoch must be 'best', 'last' or an epoch number, "
                              f"got {self.final_epoch!r}")
        for e in self.factor_epochs:
            at_least("gradients.factor_epochs", e, 0)
        for key in ("batch_size", "shard_size", "cpus_per_worker", "chunk_mb", "bound_batch_size"):
            at_least(f"gradients.{key}", getattr(self, key), 1)
        at_least("gradients.workers", self.workers, 0)
        at_least("gradients.bound_batches", self.bound_batches, 0)


Budget = Literal["default", "global", "class_balanced"]


def method_of(instance: str) -> str:
    """The registered method of a method instance (``gradsimcore@threshold_quantile=0.5``:
    ``gradsimcore``); a plain method name is its own."""
    return instance.partition("@")[0]


def setting_text(value: Any) -> str:
    """A swept value as an instance name writes it: floats in their shortest form (0.9, 1e-05)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def setting_label(setting: Mapping[str, Any]) -> str:
    """A swept setting as instance names and tables write it: ``threshold_quantile=0.5``."""
    return ",".join(f"{p}={setting_text(v)}" for p, v in setting.items())


def instance_name(method: str, setting: Mapping[str, Any]) -> str:
    return f"{method}@{setting_label(setting)}"


@dataclass(frozen=True)
class ScoreConfig:
    """Scores and subsets: every method x fraction x seed.

    ``methods`` name registered selection methods (:data:`coreset.methods.METHODS`).
    ``norm`` is the gradient column the magnitude methods rank by (the paper: ``l2_last``
    for MNIST/CIFAR, ``l2_weights`` for ImageNet), at the trained model. ``budget``
    "default" keeps each method's own (class-balanced for GradSimCore, global for the
    others). ``params`` holds each method's own parameters, declared by the method
    (``score.params.gradsimcore.threshold_quantile=0.8``, ``score.params.nonextreme_max_gradient.drop_fraction=0.1``);
    unset ones keep the method's defaults.

    ``sweep`` lists values of a method's parameters to compare, as seeds are:
    ``{gradsimcore: {threshold_quantile: [0.5, 0.9, 0.99]}}`` scores the method once per value
    (every combination, when several parameters are swept) and retrains each of them at every
    fraction and seed; a list of settings names them one by one instead
    (``{gradsimcore: [{threshold_quantile: 0.9}, {threshold: 0.5}]}``: quantile and fixed Φ
    side by side). Each scoring is a method *instance* named
    ``<method>@<param>=<value>[,<param>=<value>]`` (``gradsimcore@threshold_quantile=0.5``),
    the name its scores, subsets and trial rows carry (:attr:`instances`), except the setting
    equal to the method's ``params``, which keeps the method's name (a sweep added to a finished
    study reuses its results). Why: a method's free choice (GradSimCore's Φ,
    Non-extreme's dropped share, CCS's β) should be set from a table of accuracy against it,
    not by fiat.
    """

    methods: tuple[str, ...] = ("random", "max_gradient", "nonextreme_max_gradient", "gradient_cdf", "gradsimcore")
    fractions: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.2)
    seeds: tuple[int, ...] = (0, 1)
    norm: str = "l2_last"
    budget: Budget = "default"
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sweep: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        from coreset.gradients.last_layer import NORMS
        from coreset.gradients.spec import GROUPS
        from coreset.methods import METHODS

        check_literals(self, "score.")
        if not self.methods:
            raise ConfigError(f"score.methods must name at least one method; allowed: {', '.join(METHODS.names())}")
        for m in self.methods:
            choice("score.methods", m, METHODS.names())
        self._check_sweep()
        if not self.fractions or not self.seeds:
            raise ConfigError("score.fractions and score.seeds must each list at least one value")
        for f in self.fractions:
            in_range("score.fractions", f, 0.0, 1.0)
        for sd in self.seeds:
            at_least("score.seeds", sd, 0)
        norm, _, group = self.norm.partition("_")
        if norm not in NORMS or group not in GROUPS:
            raise ConfigError(f"score.norm must be <{'|'.join(NORMS)}>_<{'|'.join(GROUPS)}>, got {self.norm!r}")
        for name in self.params:
            choice("score.params", name, METHODS.names())
            self.method_params(name)

    def _check_sweep(self) -> None:
        from coreset.methods import METHODS, params_fields

        for name, values in self.sweep.items():
            key = f"score.sweep.{name}"
            if name not in self.methods:
                raise ConfigError(f"{key}: {name!r} is not one of score.methods ({', '.join(self.methods)})")
            settings = values if _is_list(values) else [values]
            if not settings or not all(isinstance(v, Mapping) and v for v in settings):
                raise ConfigError(f"{key} must map parameter names to lists of values, or list settings "
                                  f"(mappings of parameter names to values)")
            for param in {p for v in settings for p in v}:
                choice(key, param, params_fields(METHODS.get(name)) or ("(none)",))
            for param, listed in ({} if _is_list(values) else values).items():
                if not _is_list(listed) or not listed:
                    raise ConfigError(f"{key}.{param} must be a non-empty list of values, got {listed!r}")
        for instance in self.instances:
            self.method_params(instance)

    def _swept(self, name: str) -> list[dict[str, Any]]:
        """``name``'s swept settings in the config's order: the settings listed, or every
        combination of the values listed per parameter."""
        swept = self.sweep.get(name) or {}
        if _is_list(swept):
            return [dict(s) for s in swept]
        return [dict(zip(swept, combo, strict=True)) for combo in itertools.product(*swept.values())]

    @functools.cached_property
    def instance_settings(self) -> dict[str, dict[str, Any]]:
        """Every method instance the study scores, in ``methods`` order, with its swept setting
        (``{}`` for a method that is not swept). The setting equal to the method's ``params``
        keeps the plain name: its results are the method's own, so a sweep added to a finished
        study reuses them. Worked out once (the config is frozen)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.methods:
            swept = self._swept(name)
            if not swept:
                out[name] = {}
                continue
            plain = self._params(name, {}, f"score.params.{name}.")
            for s in swept:
                instance = name if self._params(name, s, f"score.sweep.{name}.") == plain else instance_name(name, s)
                if instance in out:  # the same setting twice, or two equal to the method's params
                    raise ConfigError(f"score.sweep.{name} lists the setting {instance!r} twice "
                                      f"({setting_label(out[instance])} and {setting_label(s)})")
                out[instance] = s
        return out

    def _params(self, method: str, setting: Mapping[str, Any], prefix: str) -> Any:
        from coreset.methods import METHODS

        params = build(METHODS.get(method).Params, {**(self.params.get(method) or {}), **setting}, prefix=prefix)
        params.validate(prefix)
        return params

    @property
    def instances(self) -> tuple[str, ...]:
        """The method instances the study scores, in ``methods`` order: a method's own name, or
        for a swept one a name per setting (see the class docstring)."""
        return tuple(self.instance_settings)

    def instance_setting(self, instance: str) -> dict[str, Any]:
        """The swept values of ``instance`` (``{}`` for a method that is not swept)."""
        if instance not in self.instance_settings:
            raise ConfigError(f"{instance!r} is not a method instance of this study; it scores "
                              f"{', '.join(self.instances)}")
        return self.instance_settings[instance]

    def method_params(self, name: str) -> Any:
        """Method (instance) ``name``'s declared parameters: the method's defaults updated by
        ``params[<method>]`` and, for a swept instance, by its swept values; validated."""
        method = method_of(name)
        if name == method:
            return self._params(method, {}, f"score.params.{method}.")
        return self._params(method, self.instance_setting(name), f"score.sweep.{method}.")

    @staticmethod
    def unknown_key_hint(key: str) -> str | None:
        """Where a method parameter given as a top-level score key belongs."""
        from coreset.methods import METHODS, params_fields

        owners = [m for m in METHODS.names() if key in params_fields(METHODS.get(m))]
        return " or ".join(f"did you mean score.params.{m}.{key}?" for m in owners) or None


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining trials: one per method x fraction x seed x target model, from random init.

    Empty ``methods``/``fractions``/``seeds`` take the score section's (a swept method named
    in ``methods`` retrains every one of its instances, an instance name only that one); empty
    ``target_models`` the source model. Training length is a policy: ``epochs`` (a fixed
    number of passes over the subset, as DeepCore does) or ``steps`` (a fixed number of
    optimiser steps whatever the subset size, evaluated at ``evaluations`` evenly spaced
    points). Optimiser and schedule come from the ``train`` section. ``full_data`` adds
    the reference trials on the whole train split (fraction 1.0).

    ``early_stopping`` is the gradient-magnitude paper's rule: train at most ``steps`` steps
    and at most ``epochs`` passes, measure validation accuracy every ``validate_every``
    steps, or every ``validate_epochs`` passes over the subset where that is longer (on
    ``val_size`` images of the study's validation split; 0: all of them), and stop when it
    has not improved for ``patience`` measurements. ``validate_epochs`` keeps patience a
    length of training on the large subsets too: counted in steps alone, MNIST's full-data
    reference stalled after half a pass at a time and stopped 0.1% below a 10% subset. A
    row then holds the test accuracy of the best-validation checkpoint (``test_acc``)
    beside the last one's (``final_test_acc``), with its validation accuracy and the steps
    it ran. Its learning
    rate is constant (``train.lr``): one decaying over the maximum would keep validation
    accuracy rising until the maximum. With ``lr_drops`` > 0 a stall first divides the rate
    by 10 and patience starts again, up to ``lr_drops`` times, before it stops: the
    gradient-magnitude paper trains with learning-rate decay and early stopping, and at a
    constant rate MNIST's CNN plateaus near 98.5% validation accuracy where one drop takes it
    past 99%. ``min_delta`` is the gain of validation accuracy that counts as better.

    Trials run in packs (``trials_per_pack``; 0: enough packs for every slot of the cluster
    to take several), one after the other in one Tune trial: a small-subset trial is seconds
    of training, and its own process would spend as long starting and loading the data.

    ``resident_max_gb`` bounds the uint8 images a pack process holds on its trials' device
    (:mod:`coreset.data.resident`): on a GPU, batches are then gathered, augmented and
    normalised there instead of on the one or two CPU cores a trial gets, which cannot feed
    a GPU a CIFAR-sized model's steps. On CUDA the bound is also a share of the device's
    memory (half of its ``gpus_per_trial`` part), so packs sharing a GPU leave room for
    each other's models. 0: every trial reads through the loader. It does not join the trial
    settings key: the batches are the same either way.
    """

    target_models: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    fractions: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    policy: Literal["epochs", "steps", "early_stopping"] = "epochs"
    epochs: int = 200
    steps: int = 2000
    evaluations: int = 5
    validate_every: int = 100  # early_stopping: steps between validation measurements
    validate_epochs: float = 0.0  # early_stopping: at least these passes between measurements (0: steps alone)
    patience: int = 5  # early_stopping: measurements without a better validation accuracy
    val_size: int = 0  # early_stopping: validation images measured (0: the whole split)
    lr_drops: int = 0  # early_stopping: stalls that divide the rate by 10 before one stops the trial
    min_delta: float = 0.0  # early_stopping: the validation accuracy gain that counts as better
    batch_size: int = 128
    full_data: bool = True
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.25  # used when the cluster has GPUs: small trials share one
    max_concurrent: int = 0  # 0: as many as resources allow
    max_failures: int = 2
    trials_per_pack: int = 0  # 0: about four packs per trial slot (stages.retrain.trial_packs)
    resident_max_gb: float = 16.0  # images held on the trials' device (coreset.data.resident); 0: the loader

    def validate(self) -> None:
        from coreset.methods import METHODS
        from coreset.models import MODELS

        for m in self.target_models:
            choice("retrain.target_models", m, tuple(MODELS.names()))
        check_literals(self, "retrain.")
        for m in self.methods:
            choice("retrain.methods", method_of(m), METHODS.names())
        for f in self.fractions:
            in_range("retrain.fractions", f, 0.0, 1.0)
        for sd in self.seeds:
            at_least("retrain.seeds", sd, 0)
        for key in ("epochs", "steps", "evaluations", "validate_every", "patience", "batch_size", "cpus_per_trial"):
            at_least(f"retrain.{key}", getattr(self, key), 1)
        at_least("retrain.val_size", self.val_size, 0)
        at_least("retrain.validate_epochs", self.validate_epochs, 0.0)
        at_least("retrain.lr_drops", self.lr_drops, 0)
        in_range("retrain.min_delta", self.min_delta, 0.0, 1.0, lo_open=False, hi_open=True)
        in_range("retrain.gpus_per_trial", self.gpus_per_trial, 0.0, 8.0, lo_open=False)
        at_least("retrain.max_concurrent", self.max_concurrent, 0)
        at_least("retrain.max_failures", self.max_failures, 0)
        at_least("retrain.trials_per_pack", self.trials_per_pack, 0)
        at_least("retrain.resident_max_gb", self.resident_max_gb, 0.0)


@dataclass(frozen=True)
class StudyConfig:
    """One study: data, source model, source training, gradients, scores and subsets, retraining."""

    name: str = "study"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gradients: GradientsConfig = field(default_factory=GradientsConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty string without '/', got {self.name!r}")
        at_least("seed", self.seed, 0)
        for m in self.retrain.methods:
            if m not in self.score.methods and m not in self.score.instances:
                raise ConfigError(f"retrain.methods names {m!r}, which score.methods does not score")
        if self.retrain.policy == "early_stopping" and self.data.val_fraction == 0:
            raise ConfigError("retrain.policy early_stopping measures the validation split, and data.val_fraction "
                              "is 0: set it above 0 (the paper holds out 10%)")
        for f in fields(self):
            sub = getattr(self, f.name)
            if dataclasses.is_dataclass(sub):
                sub.validate()
        self._check_methods_build()

    def _check_methods_build(self) -> None:
        """Each method refuses a study it cannot score (GradSimCore without early checkpoints)
        when it is built from the study; build them now, before any work, not stages later."""
        from coreset.methods import METHODS, Context

        context = Context(final_epoch=0, factor_epochs=self.gradients.factor_epochs, norm=self.score.norm,
                          seed=self.seed, fractions=self.score.fractions, lr=self.train.lr)
        for name in self.score.instances:
            METHODS.get(method_of(name)).from_study(self.score.method_params(name), context)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> StudyConfig:
    """Load a study YAML (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw)


def config_from_dict(raw: Mapping[str, Any]) -> StudyConfig:
    """Build and validate a :class:`StudyConfig` from plain data (e.g. a saved resolved config)."""
    cfg = build(StudyConfig, raw)
    cfg.validate()
    return cfg
