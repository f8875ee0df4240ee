"""The frame every job shares: parse the command line, check the data and each stage's
settings against the root, record the config, join or start Ray, run the stages from the
stage table, and turn the errors a user can fix into one line and exit code 2."""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence

from coreset.cli import JobArgs, parse_job_args, record_config
from coreset.cluster.runtime import init_ray, one_line_errors
from coreset.cluster.stages import STAGES
from coreset.data import load_datasets
from coreset.progress import duration
from coreset.stages.train import check_study_data

log = logging.getLogger("coreset")
__all__ = ["one_line_errors", "run_stages", "start_job"]


def start_job(doc: str, stages: Sequence[str], extend: Callable[[argparse.ArgumentParser], None] | None = None
              ) -> tuple[JobArgs, list[str], dict[str, float]]:
    """Parse arguments, check that the data loads (and is still the data of the study the root
    holds) and that no stage to run contradicts what the root holds, record the config (which
    also proves the root writable) and only then start Ray: bad input costs no cluster work
    and writes nothing. Returns the stages to run, in the table's order (``--stages`` when
    ``extend`` adds it, else ``stages``)."""
    job, ns = parse_job_args(doc.splitlines()[0], extend=extend)
    wanted = getattr(ns, "stages", None) or stages
    names = [s for s in STAGES if s in wanted]
    with one_line_errors():
        check_study_data(job.config, job.root, load_datasets(job.config.data))
        for name in names:
            check = STAGES[name].check
            if check is not None:
                check(job.config, job.root)
        record_config(job.config, job.root)
    return job, names, init_ray(job.address, job.verbose)


def run_stages(doc: str, stages: Sequence[str], extend: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> JobArgs:
    """The job described by ``doc``: ``stages`` in order (or the ``--stages`` that ``extend``
    adds), each reported as it ends."""
    job, names, resources = start_job(doc, stages, extend)
    with one_line_errors():
        for name in names:
            stage, start = STAGES[name], time.perf_counter()
            work = stage.plan(job.config, job.root)
            log.info("stage %s: %s", name, work.summary())
            result = stage.run(job.config, job.root, resources, work)
            log.info("stage %s: finished in %s: %s", name, duration(time.perf_counter() - start),
                     stage.summary(result, job.root))
            if stage.show is not None:
                stage.show(result)
    return job
