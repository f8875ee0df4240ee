"""The command line every job shares: ``--config FILE --root URI --set key=value ...``.

Bad input ends the job with one line on stderr and a non-zero exit code, before any
work starts and without touching what a study root already holds.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import yaml

from coreset import layout
from coreset.config import StudyConfig, config_from_dict, load_config
from coreset.errors import ConfigError, UserError
from coreset.lease import DEFAULT_TIMEOUT_S
from coreset.progress import ConsoleHandler, end_live_lines
from coreset.storage import StudyRoot

# Sections whose change makes an existing study root a different study.
_IDENTITY_KEYS = ("seed", "train.seed", "data.name", "data.val_fraction", "data.image_size", "data.classes",
                 "data.transpose", "model.name", "model.pretrained")


@dataclass
class JobArgs:
    config: StudyConfig
    root: StudyRoot
    address: str | None
    verbose: bool = False
    lease_timeout_s: float = DEFAULT_TIMEOUT_S
    plan: bool = False  # --plan: print what the stages will do and cost, run nothing, write nothing
    plan_out: Path | None = None
    calibrate: bool = False


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="study YAML (jobs/configs/*.yaml)")
    p.add_argument("--root", help="study root: a local path or s3://, gs:// URI (default results/<name>)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides with dotted keys, e.g. --set train.epochs=3 data.root=/data")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--verbose", action="store_true",
                   help="also show what Ray's workers, Train and Tune print (kept in Ray's session logs otherwise)")
    p.add_argument("--lease-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="s3:// and gs:// roots: a driver lease whose heartbeat is older than this is taken over "
                        f"(a killed driver's; default {DEFAULT_TIMEOUT_S:.0f})")
    p.add_argument("--plan", action="store_true",
                   help="print each stage's work units, what is done, what each unit asks for and the estimated "
                        "wall time and GPU-hours on the cluster it sees; runs nothing and writes nothing to the root")
    p.add_argument("--plan-out", type=Path, metavar="FILE", help="with --plan: also write the plan as a table "
                                                                  "(.parquet or .csv)")
    p.add_argument("--calibrate", action="store_true",
                   help="with --plan: measure each stage's rates on a few batches of its real work first "
                        "(else the rates the root recorded)")
    return p


def parse_job_args(description: str, argv: Sequence[str] | None = None,
                   extend: Callable[[argparse.ArgumentParser], None] | None = None
                   ) -> tuple[JobArgs, argparse.Namespace]:
    """Parse and validate the common job arguments; exits with one line on error. Writes
    nothing: :func:`record_config` saves the config once the data has been checked."""
    p = parser(description)
    if extend:
        extend(p)
    ns = p.parse_args(argv)
    configure_logging()
    try:
        cfg = absolute_paths(load_config(ns.config, ns.overrides))
        root = StudyRoot(resolve_path("--root" if ns.root else "the default --root", ns.root or f"results/{cfg.name}"))
        check_study(cfg, root)
    except UserError as e:
        fail(str(e))
    if ns.lease_timeout <= 0:
        fail(f"--lease-timeout must be > 0, not {ns.lease_timeout}")
    if (ns.plan_out or ns.calibrate) and not ns.plan:
        fail(f"{'--plan-out' if ns.plan_out else '--calibrate'} needs --plan")
    if ns.plan_out is not None and ns.plan_out.suffix not in (".parquet", ".csv"):
        fail(f"--plan-out {ns.plan_out}: name a .parquet or .csv file")
    if ns.plan_out is not None and not ns.plan_out.resolve().parent.is_dir():
        fail(f"--plan-out {ns.plan_out}: folder {ns.plan_out.resolve().parent} does not exist")
    return JobArgs(cfg, root, ns.address, ns.verbose, ns.lease_timeout, ns.plan, ns.plan_out, ns.calibrate), ns


def configure_logging() -> None:
    """The log format of every job and of the Ray workers it starts; progress lines live in
    place on a terminal (:class:`coreset.progress.ConsoleHandler`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[ConsoleHandler()])


# Set by Ray's job supervisor in the driver of a job started with ``ray job submit``.
_RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def resolve_path(what: str, p: str) -> str:
    """A local path made absolute (Ray workers run elsewhere); relative ones are refused in a
    submitted job, whose working directory is Ray's temporary copy of the submitter's."""
    if not p or "://" in p:
        return p
    p = os.path.expanduser(p)
    if not os.path.isabs(p) and _RAY_JOB_ENV in os.environ:
        raise ConfigError(f"{what} {p!r} is a relative path, and a job started with `ray job submit` runs in Ray's "
                          f"copy of --working-dir ({os.getcwd()}), not where it was submitted: pass an absolute path "
                          "or an s3://, gs:// URI (in the submitting shell: $PWD/...)")
    return str(Path(p).resolve())


def absolute_paths(cfg: StudyConfig) -> StudyConfig:
    """Resolve local data paths against the submitting directory: Ray workers run elsewhere.
    In a job started with ``ray job submit`` a relative path is refused: the job's directory is
    Ray's copy of ``--working-dir``, and the submitter's directory is not known there."""
    reads_files = cfg.data.name != "synthetic"  # the synthetic set is generated: its data.root is never read
    root = resolve_path("data.root", cfg.data.root) if reads_files else cfg.data.root
    data = dataclasses.replace(cfg.data, root=root,
                               cache_dir=resolve_path("data.cache_dir", cfg.data.cache_dir))
    return dataclasses.replace(cfg, data=data)


def record_config(cfg: StudyConfig, root: StudyRoot) -> None:
    """Save the resolved config in the root; refuse a root that holds a different study."""
    check_study(cfg, root)
    root.write_bytes(layout.CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())


def check_study(cfg: StudyConfig, root: StudyRoot, ignore: tuple[str, ...] = (),
                recorded: StudyConfig | None = None) -> None:
    """Refuse a root whose recorded config (``recorded``, else read from the root) is another
    study (reads only); keys in ``ignore`` may differ (a replica with another ``train.seed``)."""
    if recorded is None and not root.exists(layout.CONFIG):
        return
    old = recorded or recorded_config(root)
    for key in (k for k in _IDENTITY_KEYS if k not in ignore):
        a, b = _get(old, key), _get(cfg, key)
        if a != b:
            raise ConfigError(f"{root.url()} holds a study with {key}={a!r}, not {b!r}; use another --root")


def recorded_config(root: StudyRoot) -> StudyConfig:
    """The config a root's jobs recorded (``config.yaml``)."""
    return config_from_dict(yaml.safe_load(root.read_bytes(layout.CONFIG)))


def _get(cfg: StudyConfig, dotted: str) -> object:
    obj: object = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` as exactly one line on stderr and exit with ``code``."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip()) or "unknown error"
    end_live_lines()
    print(f"error: {line}", file=sys.stderr)
    sys.exit(code)
