"""Where each stage's outputs live inside a study root (one place, so stages agree)."""
from __future__ import annotations

CONFIG = "config.yaml"
SPLIT = "split.parquet"
# What data the study was started from (coreset/data/identity.py): later jobs refuse other data.
DATA_SOURCE = "data_source.json"
# The driver's lease (coreset/lease.py), dot-prefixed: listings and dataset readers skip it.
LEASE_LOCK = ".lease.lock"  # local roots: the flock'd file
LEASE_OWNER = ".lease.json"  # local roots: who holds the lock
LEASE_CLAIMS = ".lease"  # object stores: <claim>.json (written once) and <claim>.beat (the heartbeat)
# Measured rates of each stage's work (coreset/rates.py): what the plan's estimates come from.
RATES = "rates.json"
SOURCE = "source"
TRAIN_LOG = f"{SOURCE}/train_log.parquet"
TRAJECTORY = f"{SOURCE}/trajectory.parquet"
SOURCE_DONE = f"{SOURCE}/done.json"
# Unreadable images left out of a folder dataset (data.corrupt=skip); absent when none were.
SKIPPED_FILES = f"{SOURCE}/skipped_files.parquet"
RESUME = f"{SOURCE}/checkpoints/resume.pt"
# Each training image's correctness at each presentation of source training (Forgetting's input).
CORRECTNESS = f"{SOURCE}/correctness"


def correctness(epoch: int) -> str:
    """The training forward passes' correctness in one epoch of source training."""
    return f"{CORRECTNESS}/epoch={epoch:04d}.parquet"


def checkpoint(epoch: int) -> str:
    """Weights after ``epoch`` training epochs (epoch 0: the initialisation)."""
    return f"{SOURCE}/checkpoints/epoch={epoch:04d}.pt"


GRADIENTS = "gradients"
# Underscore-prefixed: Parquet dataset readers of gradients/ skip it.
GRADIENTS_MANIFEST = f"{GRADIENTS}/_manifest.json"
BATCH_BOUND = "batch_bound.parquet"


def gradient_epoch(epoch: int) -> str:
    """The gradient table's shards at one checkpoint."""
    return f"{GRADIENTS}/epoch_{epoch:04d}"


def gradient_shard(epoch: int, shard: int) -> str:
    """One shard of the gradient table; ``pandas.read_parquet(<root>/gradients)`` reads them all."""
    return f"{gradient_epoch(epoch)}/shard_{shard:05d}.parquet"


# The validation split's forward-only gradient rows at the trained model (GLISTER's validation
# set), written only when a configured method reads them: one file per class unit of the
# gradient table (:func:`coreset.stages.score.class_units`), named by the unit's first shard.
VALIDATION = "validation"


def validation_shard(unit: int) -> str:
    """The validation rows of the classes of the class unit that starts at gradient shard ``unit``."""
    return f"{VALIDATION}/shard_{unit:05d}.parquet"


# DeepFool's perturbation of each train image at the trained model, one table per attack
# setting (``max_iter_50-overshoot_0.02-candidates_10``), its shards those of the gradient table.
PERTURBATIONS = "perturbations"


def perturbation_table(settings: tuple[tuple[str, object], ...]) -> str:
    """The folder of the perturbation table computed with ``settings``."""
    return f"{PERTURBATIONS}/" + "-".join(f"{k}_{v}" for k, v in settings)


def perturbation_shard(settings: tuple[tuple[str, object], ...], shard: int) -> str:
    return f"{perturbation_table(settings)}/shard_{shard:05d}.parquet"


def table_manifest(folder: str) -> str:
    """The settings a table folder was computed with (underscore: dataset readers skip it)."""
    return f"{folder}/_manifest.json"


SCORES = "scores"
SUBSETS = "subsets"
ANALYSIS = "analysis"


SCORES_MANIFEST = f"{SCORES}/_manifest.json"


def scores(method: str) -> str:
    """Scores of one method; ``pandas.read_parquet(<root>/scores)`` reads every method."""
    return f"{SCORES}/{method}.parquet"


def subsets(method: str) -> str:
    return f"{SUBSETS}/{method}.parquet"


def analysis(kind: str) -> str:
    """An analysis table (``label_entropy``, ``gradsim_thresholds``, ...)."""
    return f"{ANALYSIS}/{kind}.parquet"


# What ``analysis/subset_diagnostics.parquet`` was computed from (the subsets' recorded settings).
SUBSET_DIAGNOSTICS_MANIFEST = f"{ANALYSIS}/_subset_diagnostics.json"


RETRAIN = "retrain"
ACCURACY = "accuracy.parquet"
# The id of each trial grid's Tune run (whose state lives beside the driver, not here).
TUNE_RUNS = f"{RETRAIN}/_tune_runs.json"


def trial_row(settings: str, key: str) -> str:
    """One finished retraining trial's accuracy row, under the hash of the training settings."""
    return f"{RETRAIN}/trials/{settings}/{key}.parquet"


REPORT = "report"
REPORT_INDEX = f"{REPORT}/index.html"
# What the published report was drawn from; underscore-prefixed like the other manifests.
REPORT_MANIFEST = f"{REPORT}/_manifest.json"


def report_file(name: str) -> str:
    """A figure (``<figure>.png``) or the table behind it (``<figure>.csv``) of the report."""
    return f"{REPORT}/{name}"
