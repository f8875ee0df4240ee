"""The frame every stage job shares: parse the command line, check the data, join or start
Ray, run the stage, and turn the errors a user can fix into one line and exit code 2."""
from __future__ import annotations

from typing import Callable, TypeVar

from coreset.checkpoints import CheckpointError
from coreset.cli import JobArgs, fail, parse_job_args
from coreset.cluster.runtime import StageError, init_ray
from coreset.config import StudyConfig
from coreset.data import DataError, load_datasets
from coreset.storage import StorageError, StudyRoot
from coreset.tables import SchemaError

T = TypeVar("T")
USER_ERRORS = (DataError, CheckpointError, StorageError, SchemaError, StageError, ValueError)


def run_stage(doc: str, stage: Callable[[StudyConfig, StudyRoot, dict[str, float]], T]) -> tuple[JobArgs, T]:
    """Run ``stage(config, root, cluster_resources)`` as a job described by ``doc``."""
    job, _ = parse_job_args(doc.splitlines()[0])
    try:
        load_datasets(job.config.data)  # bad data fails here, before any cluster work
    except DataError as e:
        fail(str(e))
    resources = init_ray(job.address)
    try:
        return job, stage(job.config, job.root, resources)
    except USER_ERRORS as e:
        fail(str(e))
