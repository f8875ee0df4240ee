"""Real local Ray clusters for tests: ``ray start --head`` (dashboard and job server included)
and ``ray start --address`` worker nodes, all on loopback, as on a cloud cluster.

Other Ray sessions may run on this machine at the same time, and ``ray stop`` kills every
Ray process of the machine, so a cluster gets its own free ports, temp dir and auth token,
and teardown ends only the processes it started (their process groups, plus anything whose
command line names its temp dir, plus their children).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from s3 import free_port


@dataclass
class LocalHead:
    address: str  # the job server (dashboard) URL
    env: dict[str, str]  # what a client needs: the cluster's auth token
    temp_dir: Path
    proc: subprocess.Popen
    gcs: str = ""  # host:port that worker nodes join
    workers: list[subprocess.Popen] = field(default_factory=list)


def service_ports() -> list[str]:
    """Free ports for a node's services whose defaults are fixed (two nodes on one machine collide)."""
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port", "--node-manager-port", "--object-manager-port")
    return [a for flag in flags for a in (flag, str(free_port()))]


def start_head(num_cpus: int = 2, resources: dict[str, float] | None = None) -> LocalHead:
    """``ray start --head`` on loopback with its own ports, temp dir and auth token."""
    # A short temp dir of our own: Ray's Unix sockets live under it (108-byte path limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # Token auth (default for local clusters since Ray 2.59) with a token of our own, not ~/.ray/auth_token.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port, dashboard = free_port(), free_port()
    log = temp_dir / "ray_start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
             "--ray-client-server-port", str(free_port()), *service_ports(), "--num-cpus", str(num_cpus),
             "--num-gpus", "0", "--resources", json.dumps(resources or {}), "--temp-dir", str(temp_dir),
             "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    head = LocalHead(f"http://127.0.0.1:{dashboard}", env, temp_dir, proc, gcs=f"127.0.0.1:{port}")
    try:
        _wait_ready(head, log)
    except BaseException:
        stop(head)
        raise
    return head


def add_worker(head: LocalHead, num_cpus: int, resources: dict[str, float] | None = None) -> None:
    """A worker node (its own raylet) joining ``head`` from this machine."""
    log = head.temp_dir / f"worker{len(head.workers)}.log"
    with open(log, "wb") as out:
        head.workers.append(subprocess.Popen(
            ["ray", "start", "--address", head.gcs, "--block", "--node-ip-address", "127.0.0.1", *service_ports(),
             "--num-cpus", str(num_cpus), "--num-gpus", "0", "--resources", json.dumps(resources or {}),
             "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, env=head.env, start_new_session=True))


def wait_nodes(head: LocalHead, count: int, timeout_s: float = 180) -> None:
    """Until the cluster has ``count`` live nodes."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(["ray", "list", "nodes", "--address", head.address, "--format", "json",
                              "--filter", "state=ALIVE"], capture_output=True, text=True, env=head.env, timeout=60)
        try:
            if out.returncode == 0 and len(json.loads(out.stdout or "[]")) >= count:
                return
        except json.JSONDecodeError:  # the state API is not up yet
            pass
        if time.monotonic() > deadline:
            logs = "".join(p.read_text()[-1500:] for p in head.temp_dir.glob("worker*.log"))
            raise RuntimeError(f"{count} nodes did not join:\n{out.stdout[-1000:]}{out.stderr[-1000:]}\n{logs}")
        time.sleep(1)


def _wait_ready(head: LocalHead, log: Path, timeout_s: float = 90) -> None:
    request = urllib.request.Request(f"{head.address}/api/version",
                                     headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if head.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not come up:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def stop(head: LocalHead) -> None:
    """End this cluster's processes only (never ``ray stop``: it would end every Ray on the machine)."""
    procs: set[psutil.Process] = set()
    for p in psutil.process_iter(["cmdline"]):
        try:
            groups = {head.proc.pid, *(w.pid for w in head.workers)}
            if p.pid in groups or os.getpgid(p.pid) in groups or \
                    any(str(head.temp_dir) in arg for arg in p.info["cmdline"] or ()):
                procs.add(p)
        except (psutil.Error, ProcessLookupError):
            pass
    for p in list(procs):
        try:
            procs.update(p.children(recursive=True))
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    for proc in (head.proc, *head.workers):
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
