"""The frame every job shares: parse the command line, check the data, join or start Ray,
and turn the errors a user can fix into one line and exit code 2."""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from coreset.cli import JobArgs, fail, parse_job_args, record_config
from coreset.cluster.runtime import USER_ERRORS, init_ray, user_error
from coreset.config import StudyConfig
from coreset.data import load_datasets
from coreset.stages.train import check_study_data
from coreset.storage import StudyRoot

T = TypeVar("T")
__all__ = ["USER_ERRORS", "one_line_errors", "run_stage", "start_job"]


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Errors a user can act on end the job with one line on stderr and exit code 2, also
    when they happened in a Ray task, actor or Train worker; other errors keep their traceback."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is (or wraps) a user error
        cause = user_error(e)
        if cause is None:
            raise
        fail(str(cause))


def start_job(doc: str, extend: Callable[[argparse.ArgumentParser], None] | None = None
              ) -> tuple[JobArgs, argparse.Namespace, dict[str, float]]:
    """Parse arguments, check that the data loads (and is still the data of the study the root
    holds), record the config (which also proves the root writable) and only then start Ray:
    bad input costs no cluster work and writes nothing."""
    job, ns = parse_job_args(doc.splitlines()[0], extend=extend)
    with one_line_errors():
        check_study_data(job.config, job.root, load_datasets(job.config.data))
        record_config(job.config, job.root)
    return job, ns, init_ray(job.address)


def run_stage(doc: str, stage: Callable[[StudyConfig, StudyRoot, dict[str, float]], T]) -> tuple[JobArgs, T]:
    """Run ``stage(config, root, cluster_resources)`` as a job described by ``doc``."""
    job, _, resources = start_job(doc)
    with one_line_errors():
        result = stage(job.config, job.root, resources)
    return job, result
