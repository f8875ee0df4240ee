"""Benchmark: how good ``--plan``'s estimates are, stage by stage, against the same study run.

    python benchmarks/plan.py --config jobs/configs/mnist.yaml
    python benchmarks/plan.py --config jobs/configs/imagenet_shape.yaml \\
        --set data.synthetic_size=128000 data.synthetic_classes=100

On a fresh root under ``--work`` it runs ``jobs/study.py --plan --calibrate`` (the estimate
a new user gets), then the study itself (one job, as a user runs it), then ``--plan`` on a
second fresh root holding only the first root's ``rates.json`` (the estimate from recorded
rates, which a re-planned or resumed study gets). The run's console is kept in
``<work>/run.log``. A stage's actual time is the span between
the job's ``stage <name>:`` opening line and its ``finished in`` line (log timestamps); the
job's Ray start and imports before the first stage are in no stage's estimate.

Target (issue 17): every stage within ±30% on this machine. Writes ``plan_<name>.parquet``.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import harness
import pandas as pd

from coreset import layout
from coreset.cli import fail

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(\S+ \S+) coreset INFO stage (\w+): (finished in)?")


def stage_seconds(log: str) -> dict[str, float]:
    """Each stage's span in a job's console: from its opening line to its ``finished`` line."""
    opened: dict[str, datetime] = {}
    spans: dict[str, float] = {}
    for line in log.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if m.group(3):
            spans[m.group(2)] = (when - opened[m.group(2)]).total_seconds()
        else:
            opened[m.group(2)] = when
    return spans


def study(config: Path, root: Path, sets: list[str], *extra: str) -> str:
    argv = [sys.executable, str(REPO / "jobs/study.py"), "--config", str(config), "--root", str(root), *extra]
    if sets:
        argv += ["--set", *sets]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def stage_estimates(plan_file: Path) -> pd.Series:
    frame = pd.read_parquet(plan_file)
    return frame.groupby("stage", sort=False).wall_s.sum(min_count=1)


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", type=Path, default=Path("/tmp/coreset-bench-plan"))
    ns = p.parse_args()
    if not ns.config.is_file():
        fail(f"--config {ns.config} does not exist")
    if ns.work.exists():
        shutil.rmtree(ns.work)
    fresh, replanned = ns.work / "root", ns.work / "replanned"
    ns.work.mkdir(parents=True)
    calibrated_file, recorded_file = ns.work / "calibrated.parquet", ns.work / "recorded.parquet"

    study(ns.config, fresh, ns.sets, "--plan", "--calibrate", "--plan-out", str(calibrated_file))
    console = study(ns.config, fresh, ns.sets)
    (ns.work / "run.log").write_text(console)
    actual = stage_seconds(console)
    replanned.mkdir()
    shutil.copy(fresh / layout.RATES, replanned / layout.RATES)
    study(ns.config, replanned, ns.sets, "--plan", "--plan-out", str(recorded_file))

    table = pd.DataFrame({"actual_s": pd.Series(actual), "calibrated_s": stage_estimates(calibrated_file),
                          "recorded_s": stage_estimates(recorded_file)})
    table.index.name = "stage"
    table["calibrated_vs_actual"] = table.calibrated_s / table.actual_s
    table["recorded_vs_actual"] = table.recorded_s / table.actual_s
    table = table.reset_index()
    total = {"stage": "total", **table.drop(columns="stage").sum(min_count=1).to_dict()}
    total["calibrated_vs_actual"] = total["calibrated_s"] / total["actual_s"]
    total["recorded_vs_actual"] = total["recorded_s"] / total["actual_s"]
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    harness.write_result(table, f"plan_{ns.config.stem}", ns.out,
                         title=f"--plan estimates against the run, {ns.config.name} {' '.join(ns.sets)}")


if __name__ == "__main__":
    main()
