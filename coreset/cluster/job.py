"""The frame every job shares: parse the command line, check the data and each stage's
settings against the root, take the root's lease (one driver per root), record the config,
join or start Ray, run the stages from the stage table, and turn the errors a user can fix
into one line and exit code 2."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from coreset.cli import JobArgs, parse_job_args, record_config
from coreset.cluster.plan import calibrated_rates, visible_resources
from coreset.cluster.runtime import init_ray, one_line_errors
from coreset.cluster.stages import STAGES
from coreset.data import Datasets, load_datasets
from coreset.lease import Holder, hold_lease
from coreset.planning import Counts, format_plan, plan_frame, plan_study
from coreset.progress import duration
from coreset.rates import read_rates
from coreset.stages.train import check_study_data, record_missing_data_source

log = logging.getLogger("coreset")
__all__ = ["driver_lease", "one_line_errors", "print_plan", "run_stages", "start_job"]


def driver_lease(job: JobArgs) -> AbstractContextManager[Holder]:
    """The root's lease for a job that writes there (every stage job and the report); taken
    after the read-only checks, so bad input still writes nothing, and before the first write."""
    return hold_lease(job.root, job.lease_timeout_s)


@contextmanager
def start_job(doc: str, stages: Sequence[str], extend: Callable[[argparse.ArgumentParser], None] | None = None
              ) -> Iterator[tuple[JobArgs, list[str], dict[str, float]]]:
    """Parse arguments, check that the data loads (and is still the data of the study the root
    holds) and that no stage to run contradicts what the root holds, take the root's lease,
    record the config (which also proves the root writable) and only then start Ray: bad input
    costs no cluster work and writes nothing. Yields the stages to run, in the table's order
    (``--stages`` when ``extend`` adds it, else ``stages``), while the lease is held; user
    errors in the body end the job with one line, after the lease is released."""
    job, ns = parse_job_args(doc.splitlines()[0], extend=extend)
    wanted = getattr(ns, "stages", None) or stages
    names = [s for s in STAGES if s in wanted]
    with one_line_errors():
        start = time.perf_counter()
        datasets = load_datasets(job.config.data)
        load_s = time.perf_counter() - start
        check_study_data(job.config, job.root, datasets)
        for name in names:
            check = STAGES[name].check
            if check is not None:
                check(job.config, job.root)
        if job.plan:
            print_plan(job, names, datasets, load_s)
            sys.exit(0)  # --plan runs nothing: no lease, no config, no Ray work
    with one_line_errors(), driver_lease(job):
        record_config(job.config, job.root)
        record_missing_data_source(job.root, datasets)
        yield job, names, init_ray(job.address, job.verbose)


def print_plan(job: JobArgs, names: list[str], datasets: Datasets, load_s: float) -> None:
    """``--plan``: print (and with ``--plan-out`` write) the plan of ``names``; the rates are
    the root's records, overridden by ``--calibrate``'s measurements."""
    cfg, root = job.config, job.root
    resources = visible_resources(job.address)
    counts = Counts.of(cfg, root, datasets)
    rates = read_rates(root)
    if job.calibrate:
        rates = {**rates, **calibrated_rates(cfg, datasets, counts.split, names, resources, load_s)}
    rows = plan_study(cfg, root, names, counts, resources, rates)
    lines = format_plan(rows, resources, job.calibrate)
    print(f"plan of study {cfg.name} at {root.url()}:", *lines, sep="\n", flush=True)
    if job.plan_out is not None:
        frame = plan_frame(rows)
        if job.plan_out.suffix == ".csv":
            frame.to_csv(job.plan_out, index=False)
        else:
            frame.to_parquet(job.plan_out, index=False)
        log.info("plan: written to %s", job.plan_out)


def run_stages(doc: str, stages: Sequence[str], extend: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> JobArgs:
    """The job described by ``doc``: ``stages`` in order (or the ``--stages`` that ``extend``
    adds), each reported as it ends."""
    with start_job(doc, stages, extend) as (job, names, resources):
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
