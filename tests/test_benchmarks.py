"""The benchmarks in benchmarks/: the shared harness measures what it claims, and each
benchmark runs at its tiniest size, prints its table and writes it with the columns that
NOTES.md and the README figures are read from.

ray_overhead needs a trained study root, so only its bad-input path runs here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from folders import tiny_folder

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

GRADIENT_COLUMNS = ["model", "device", "image_size", "piece", "batch", "s_per_batch", "samples_per_s", "peak_mem_mib"]
RATIO_COLUMNS = ["model", "last_vs_forward_thr", "l2_vs_train_time", "l2_vs_vmap_speedup", "l2_vs_loop_speedup",
                 "l2_vs_train_mem"]
GRADSIM_COLUMNS = ["part", "backend", "device", "classes_run", "n_per_class", "C", "D", "seconds", "seconds_full",
                   "speedup_vs_sklearn", "samples_differing_from_sklearn", "samples_outside_tie_bounds",
                   "generate_seconds", "subprocess_wall_seconds", "peak_rss_mb"]
MIB_200 = 200 << 20


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch):
    """benchmarks/harness.py, importable here and in the probes these tests start."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")])))
    import harness

    return harness


def probe(body: str) -> list[str]:
    """A probe process: ``body``, then the reply :func:`harness.run_probe` reads."""
    return [sys.executable, "-c", f"import harness\n{body}\nharness.reply({{'ok': 1}})"]


def test_peak_counts_what_the_probe_allocates(harness) -> None:
    empty = harness.run_probe(probe("pass"))
    full = harness.run_probe(probe(f"data = b'x' * {MIB_200}"))  # bytes * n writes every page
    assert empty.payload == full.payload == {"ok": 1}
    assert 190 <= full.peak_mib - empty.peak_mib <= 260, (empty, full)


def test_peak_counts_the_probes_children(harness) -> None:
    """200 MB held only by a grandchild is part of the measurement's peak."""
    empty = harness.run_probe(probe("pass"))
    grandchild = f"import time; data = b'x' * {MIB_200}; time.sleep(1.0)"
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    tree = harness.run_probe(probe(spawn))
    assert tree.peak_mib - empty.peak_mib >= 190, (empty, tree)


def test_probe_that_fails_raises_with_its_stderr(harness) -> None:
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        harness.run_probe(probe("1 / 0"))


def test_time_pieces_leaves_the_warm_up_out(harness) -> None:
    calls = {"a": 0, "b": 0}

    def piece(k: str):
        def fn() -> None:
            calls[k] += 1
            time.sleep(0.3 if calls[k] == 1 else 0.01)  # the first call is the slow one
        return fn

    timings = harness.time_pieces({"a": piece("a"), "b": piece("b")}, {"a": 3, "b": 1})
    assert calls == {"a": 4, "b": 2}
    assert timings["a"].repeats == 3 and timings["b"].repeats == 1
    assert timings["a"].min_s <= timings["a"].median_s < 0.2 and timings["b"].median_s < 0.2


def run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


@pytest.mark.slow  # four processes import torch: 20-60 s on 2 cores
def test_gradients_smoke(tmp_path: Path) -> None:
    proc = run("gradients.py", "--models", "linear", "--device", "cpu", "--image-size", "8", "--batch", "8",
               "--small-batch", "2", "--repeats", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "s_per_batch" in proc.stdout and "l2_vs_train_mem" in proc.stdout
    table = pd.read_parquet(tmp_path / "gradients.parquet")
    assert list(table.columns) == GRADIENT_COLUMNS
    assert set(table.piece) == {"forward", "train_step", "last_table", "engine_l2", "vmap_grad", "loop"}
    assert table.set_index("piece").loc[["train_step", "engine_l2"], "peak_mem_mib"].notna().all()
    ratios = pd.read_parquet(tmp_path / "gradients_ratios.parquet")
    assert list(ratios.columns) == RATIO_COLUMNS and len(ratios) == 1


@pytest.mark.slow  # scikit-learn, FAISS and torch imports plus a probe: 20-40 s on 2 cores
def test_gradsim_smoke(tmp_path: Path) -> None:
    proc = run("gradsim.py", "--part", "all", "--classes", "1", "--n-per-class", "64", "--dim", "8",
               "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "speedup_vs_sklearn" in proc.stdout
    table = pd.read_parquet(tmp_path / "gradsim_all.parquet")
    assert list(table.columns) == GRADSIM_COLUMNS
    assert list(table.backend) == ["sklearn", "faiss", "gram", "gram (quantile Φ fused)"]
    assert (table.samples_outside_tie_bounds.dropna() == 0).all()
    assert table.peak_rss_mb.iloc[-1] > 0


@pytest.mark.slow  # a local S3 server, a 1-CPU Ray and three fresh interpreters: ~60 s on 2 cores
def test_data_smoke(shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_folder(shared_data, tmp_path / "folder", classes=2, train=30, val=5)
    proc = run("data.py", "--data", str(folder), "--repeats", "1", "--shard-mb", "0.02", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    read = pd.read_parquet(tmp_path / "data_read.parquet")
    assert list(read.columns) == ["reader", "order", "images", "min_s", "median_s", "images_per_s", "vs_folder",
                                  "server_cpu_s", "client_vs_folder"]
    assert (read.server_cpu_s[read.reader.str.contains("s3")] > 0).all()
    assert set(zip(read.reader, read.order, strict=True)) >= {("bare", "in order"), ("folder", "shuffled"),
                                                              ("pack (s3)", "in order"), ("pack (s3)", "shuffled"),
                                                              ("ray data (s3)", "in order")}
    assert (read.images == 60).all() and (read.images_per_s > 0).all()
    assert read.set_index(["reader", "order"]).vs_folder[("folder", "in order")] == 1.0
    first = pd.read_parquet(tmp_path / "data_first_batch.parquet")
    assert first.source.tolist() == ["folder", "pack (s3)"] and (first.seconds > 0).all()
    packed = pd.read_parquet(tmp_path / "data_pack.parquet")
    assert packed.into.tolist() == ["disk", "s3"] and (packed.images == 70).all() and (packed.shards > 2).all()


@pytest.mark.slow  # one CIFAR-shaped class through the gradient code and two methods: ~30 s
def test_methods_smoke(tmp_path: Path) -> None:
    proc = run("methods.py", "--shapes", "cifar", "--methods", "max_gradient", "gradsimcore", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    table = pd.read_parquet(tmp_path / "methods.parquet").set_index("method")
    assert list(table.columns) == ["shape", "by_class", "rows_per_class", "classes", "seconds_per_class",
                                   "seconds_per_row", "projected_s"]
    assert table.by_class.to_dict() == {"max_gradient": False, "gradsimcore": True}
    assert (table.rows_per_class == 4500).all() and (table.classes == 10).all()
    assert (table.projected_s == table.seconds_per_class * 10).all() and (table.seconds_per_class > 0).all()


@pytest.mark.slow  # a fresh interpreter imports torch and trains two tiny trials per path: ~20 s on 2 cores
def test_retrain_smoke(tmp_path: Path) -> None:
    proc = run("retrain.py", "--models", "cnn5", "--images", "64", "--batch", "16", "--steps", "3", "--repeats", "1",
               "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "vs_loader" in proc.stdout
    table = pd.read_parquet(tmp_path / "retrain.parquet")
    assert list(table.columns) == ["device", "model", "path", "images", "batch", "steps", "min_s", "median_s",
                                   "steps_per_s", "vs_loader"]
    cpu = table[table.device == "cpu"].set_index("path")
    assert list(cpu.index) == ["loader", "resident"] and cpu.vs_loader["loader"] == 1.0
    assert (table.steps_per_s > 0).all()


@pytest.mark.parametrize("script, args, message", [
    ("gradients.py", ["--models", "no_such_model"], "unknown model no_such_model"),
    ("ray_overhead.py", ["--config", "jobs/configs/mnist.yaml", "--root", "{tmp}/missing"],
     "no finished source training"),
    ("methods.py", ["--methods", "no_such_method"], "unknown method no_such_method"),
    ("retrain.py", ["--models", "no_such_model"], "unknown model no_such_model"),
])
def test_bad_input_is_one_line(script: str, args: list[str], message: str, tmp_path: Path) -> None:
    proc = run(script, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "missing").exists()


def test_scale_counts_what_a_job_read_from_the_root_from_disk(tmp_path: Path) -> None:
    """scale.py's bytes-read figure: after eviction, what a job (any process of it) reads of
    the root's files is cached, and only that counts; a file the job replaces does not."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub/read.bin").write_bytes(os.urandom(8 << 20))
    (root / "half.bin").write_bytes(os.urandom(8 << 20))
    (root / "untouched.bin").write_bytes(os.urandom(8 << 20))
    (root / "replaced.bin").write_bytes(os.urandom(1 << 20))
    job = (f"import os; open({str(root / 'sub/read.bin')!r}, 'rb').read()\n"
           f"f = open({str(root / 'half.bin')!r}, 'rb'); f.seek(4 << 20); f.read(1 << 20)\n"
           f"open({str(root / 'new.bin')!r}, 'wb').write(os.urandom(1 << 20))\n"
           f"os.replace({str(root / 'new.bin')!r}, {str(root / 'replaced.bin')!r})\n")
    probe = ("import sys, scale\n"
             f"files = scale.evict_root(scale.Path({str(root)!r}))\n"
             f"scale.run_job([sys.executable, '-c', {job!r}], scale.Path({str(tmp_path / 'job.log')!r}))\n"
             "print(scale.read_from_root(files))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), str(REPO),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    read = int(proc.stdout.split()[-1])
    # the whole first file and the 1 MiB of the second, plus at most the kernel's readahead window around it
    assert (9 << 20) <= read <= (9 << 20) + (3 << 20), read
