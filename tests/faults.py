"""Fault injection from outside, as a spot fleet or an operator would do it: find processes
by what Ray names them and kill them, wait for files to appear in a study root."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def ray_processes(name: str) -> list[psutil.Process]:
    """Ray worker processes whose title names ``name`` (Ray titles actors ``ray::Class.method``)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::") and name in cmd:
            found.append(p)
    return found


def kill_one(name: str, timeout_s: float = 60) -> int:
    """SIGKILL one Ray worker process titled with ``name``; returns its pid."""
    procs: list[psutil.Process] = []

    def found() -> bool:
        procs[:] = ray_processes(name)
        return bool(procs)

    wait_for(found, timeout_s, f"a Ray process named {name}")
    os.kill(procs[0].pid, signal.SIGKILL)
    return procs[0].pid


def parquet_files(folder: Path) -> dict[Path, int]:
    """Every published Parquet file under ``folder`` with its inode-change time (ns)."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.parquet") if not p.name.startswith(".")}


def kill_session(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGKILL a job started with ``start_new_session=True`` and everything it started
    (an embedded Ray's services and workers), as when a machine is lost."""
    sid = proc.pid
    members = [p for p in psutil.process_iter() if _sid(p) == sid]
    for p in members:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=timeout_s)
    psutil.wait_procs(members, timeout=timeout_s)


def _sid(p: psutil.Process) -> int | None:
    try:
        return os.getsid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def tune_trial_failures(experiment_dir: Path) -> dict[str, int]:
    """Failures per trial id, from the newest Tune experiment state (Ray 2.60's format)."""
    state = json.loads(sorted(experiment_dir.glob("experiment_state-*.json"))[-1].read_text())
    return {json.loads(t[0])["trial_id"]: json.loads(t[1])["num_failures"] for t in state["trial_data"]}


def worker_processes_of(raylet_pid: int, name: str) -> list[psutil.Process]:
    """Processes started by one node's raylet (one node of a cluster on this machine) titled ``name``."""
    return [c for c in psutil.Process(raylet_pid).children(recursive=True) if name in " ".join(c.cmdline())]
