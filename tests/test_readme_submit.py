"""The README's "Submitting to a Ray cluster on this machine" recipe, run as written: its two
shell blocks, in a temporary HOME whose ``~/.ray/auth_token`` a local ``ray.init`` wrote first
(as the quickstart leaves it), from a copy of the repository beside a ``shared/data`` link.
Only what other Ray sessions on this machine would collide with is changed: the two ports and
the temp dir become free ones, and the head gets free ports for its other services too.

The job it submits is the smoke study on real MNIST with real Ray and Tune, so this is also
the study's end-to-end test: every table of the root it leaves is checked, and the same
command run locally afterwards (embedded Ray) finds every stage done and rewrites nothing."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest
from clusters import LocalHead, service_ports, stop
from faults import wait_for
from s3 import free_port

from coreset.config import load_config
from coreset.methods.budget import global_budget
from coreset.stages.retrain import trial_grid

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Submitting to a Ray cluster on this machine"
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"


def readme_blocks() -> list[str]:
    """The ``bash`` blocks of the README section, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def _ours(temp_dir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp_dir) in arg for arg in p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def check_smoke_root(root: Path, console: str) -> None:
    """A finished smoke study: one accuracy row per trial of the grid, the subsets of the
    budget's sizes, each trial trained on its subset, and the summary on the console."""
    cfg = load_config(SMOKE)
    accuracy = pd.read_parquet(root / "accuracy.parquet")
    grid = trial_grid(cfg)
    assert len(accuracy) == len(grid)
    assert (set(zip(accuracy.method, accuracy.fraction, accuracy.seed, strict=False))
            == {(t.method, t.fraction, t.seed) for t in grid})
    assert accuracy.test_acc.between(0, 1).all() and (accuracy.best_test_acc >= accuracy.test_acc).all()
    assert "test accuracy (%) of mnist_cnn" in console

    split = pd.read_parquet(root / "split.parquet")
    n_train = int((split.split == "train").sum())
    subsets = pd.read_parquet(root / "subsets")
    for (method, fraction, seed), rows in subsets.groupby(["method", "fraction", "seed"]):
        assert len(rows) == global_budget(n_train, fraction)
        trained = accuracy[(accuracy.method == method) & (accuracy.fraction == fraction) & (accuracy.seed == seed)]
        assert trained.empty or trained.n_train.iloc[0] == len(rows)
    assert accuracy[accuracy.method == "full"].n_train.eq(n_train).all()
    assert (root / "config.yaml").is_file()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1500)
def test_readme_single_machine_submit(tmp_path: Path, shared_data: Path) -> None:
    head_block, submit_block = readme_blocks()
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    shutil.copytree(REPO, work / "coreset", ignore=shutil.ignore_patterns(".git", "results", "__pycache__",
                                                                          ".pytest_cache", ".ruff_cache"))
    (work / "shared").mkdir()
    (work / "shared" / "data").symlink_to(shared_data)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    # The interpreter's own bin first: `ray` and `python` must not go through HOME-relative shims (pyenv).
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    real_token = Path("~/.ray/auth_token").expanduser()
    real_before = real_token.read_bytes() if real_token.exists() else None

    # As after the quickstart: a local Ray wrote the token under HOME.
    # address="local": a plain ray.init() would join a cluster that `ray start` left running here.
    init = "import ray; ray.init(address='local', num_cpus=1, include_dashboard=False); ray.shutdown()"
    subprocess.run([sys.executable, "-c", init], env=env, check=True, capture_output=True, timeout=180)
    assert (home / ".ray" / "auth_token").is_file()

    temp_dir = Path(f"/tmp/rr{os.getpid()}")  # short: Ray's socket paths live under it
    port, dashboard = free_port(), free_port()
    head_block = (head_block.replace("--port 6379", f"--port {port}").replace("8265", str(dashboard))
                  .replace("/tmp/ray-coreset", str(temp_dir))
                  .replace(f"--temp-dir {temp_dir}",
                           f"--temp-dir {temp_dir} --ray-client-server-port {free_port()} {' '.join(service_ports())}"))
    submit_block = submit_block.replace("8265", str(dashboard))
    log = tmp_path / "head.log"
    with open(log, "w") as out:
        # a terminal's shell: SIGINT at its default even when the suite itself runs in a script's background
        head = subprocess.Popen(["bash", "-c", head_block], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=work / "coreset", start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ready = ["ray", "job", "list", "--address", f"http://127.0.0.1:{dashboard}"]
        wait_for(lambda: head.poll() is not None or subprocess.run(
            ready, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, timeout=60).returncode == 0,
            180, "the head's job server", every_s=1)
        assert head.poll() is None, log.read_text()[-3000:]

        submit = subprocess.run(["bash", "-ec", submit_block], capture_output=True, text=True, env=env,
                                cwd=work / "coreset", timeout=1200)  # the smoke study on real MNIST
        out = submit.stdout + submit.stderr
        assert submit.returncode == 0, out[-4000:]
        assert "Job 'smoke-1' succeeded" in out and "ray: joined cluster" in out, out[-4000:]
        assert out.count("coreset INFO study smoke finished in ") == 2, out[-2000:]  # submit's console, then logs'
        root = work / "coreset" / "results" / "smoke-job"
        check_smoke_root(root, out)

        # The same job with the config's relative data.root stops with one line saying what to pass.
        relative = re.search(r"ray job submit .*?smoke\.yaml", submit_block).group(0).replace("smoke-1", "smoke-2")
        rel = subprocess.run(["bash", "-c", f"export RAY_AUTH_MODE=token; {relative} --root $PWD/results/rel"],
                             capture_output=True, text=True, env=env, cwd=work / "coreset", timeout=300)
        # One line (Ray's status message repeats the job's last lines, so it is printed twice).
        errors = sorted({ln for ln in (rel.stdout + rel.stderr).splitlines() if ln.startswith("error: ")})
        assert rel.returncode != 0 and len(errors) == 1, (rel.stdout + rel.stderr)[-3000:]
        assert errors[0].startswith("error: data.root '../shared/data' is a relative path") and \
            "pass an absolute path or an s3://, gs:// URI" in errors[0], errors

        # The cloud recipe's scale step (jobs/scale.py) as a job: with no GPUs asked for, it returns at once.
        scale = subprocess.run(
            ["bash", "-c", f"export RAY_AUTH_MODE=token; ray job submit --address http://127.0.0.1:{dashboard} "
                           "--working-dir . --runtime-env-json '{\"excludes\": [\".git\", \"results\"]}' -- "
                           "python jobs/scale.py --gpus 0 --wait-s 30"],
            capture_output=True, text=True, env=env, cwd=work / "coreset", timeout=300)
        assert scale.returncode == 0 and "scale: 0 GPUs requested, 0 in the cluster" in scale.stdout + scale.stderr, \
            (scale.stdout + scale.stderr)[-3000:]

        # Ctrl-C in terminal 1 stops that cluster: every process it started ends.
        os.killpg(head.pid, signal.SIGINT)
        head.wait(60)
        wait_for(lambda: not _ours(temp_dir), 60, "the cluster's processes to end", every_s=1)
    finally:
        stop(LocalHead(f"http://127.0.0.1:{dashboard}", env, temp_dir, head))

    # The job's command run here, with no cluster: every stage's outputs are found, none redone.
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}
    study = re.search(r"python jobs/study\.py .*", submit_block).group(0)
    again = subprocess.run(["bash", "-c", study], capture_output=True, text=True, env=env, cwd=work / "coreset",
                           timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "stage gradients: 0 of " in again.stderr, again.stderr[-3000:]
    assert f"stage retrain: 0 of {len(trial_grid(load_config(SMOKE)))} trials" in again.stderr, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")} == before  # nothing rewritten
    assert (real_token.read_bytes() if real_token.exists() else None) == real_before
