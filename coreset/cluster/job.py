"""The frame every job shares: parse the command line, check the data, join or start Ray,
and turn the errors a user can fix into one line and exit code 2."""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from coreset.checkpoints import CheckpointError
from coreset.cli import JobArgs, fail, parse_job_args
from coreset.cluster.runtime import StageError, init_ray
from coreset.config import StudyConfig
from coreset.data import DataError, load_datasets
from coreset.storage import StorageError, StudyRoot
from coreset.tables import SchemaError

T = TypeVar("T")
USER_ERRORS = (DataError, CheckpointError, StorageError, SchemaError, StageError, ValueError)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Errors a user can act on end the job with one line on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as e:
        fail(str(e))


def start_job(doc: str, extend: Callable[[argparse.ArgumentParser], None] | None = None
              ) -> tuple[JobArgs, argparse.Namespace, dict[str, float]]:
    """Parse arguments, check that the data loads (before any cluster work), start Ray."""
    job, ns = parse_job_args(doc.splitlines()[0], extend=extend)
    with one_line_errors():
        load_datasets(job.config.data)
    return job, ns, init_ray(job.address)


def run_stage(doc: str, stage: Callable[[StudyConfig, StudyRoot, dict[str, float]], T]) -> tuple[JobArgs, T]:
    """Run ``stage(config, root, cluster_resources)`` as a job described by ``doc``."""
    job, _, resources = start_job(doc)
    with one_line_errors():
        result = stage(job.config, job.root, resources)
    return job, result
