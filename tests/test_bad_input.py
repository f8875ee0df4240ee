"""Bad input through the real job CLIs: each case ends with exactly one ``error:`` line on
stderr, no traceback, exit code 2, and a study root whose existing files are unchanged
and which holds no partial (``.name.tmp-xxxx``) file.

Faults are injected for real. An unwritable root: ``chmod 0o555`` as a normal user; as root
(which ignores permissions) a read-only bind mount of the root. A full disk: a file-size
limit (``RLIMIT_FSIZE``, any user) on the job's driver once Ray's own processes are up (a
limit on the whole job would break Ray itself), and, where mounting is allowed, a tiny
tmpfs that the study fills.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from folders import images, tiny_folder, truncate

import coreset.cluster.job as job_module
from coreset import layout
from coreset.checkpoints import CheckpointError
from coreset.cli import absolute_paths, record_config
from coreset.cluster.runtime import user_error
from coreset.config import load_config
from coreset.stages.train import train_source
from coreset.storage import StorageError, StudyRoot

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs/configs/smoke.yaml"
SYNTHETIC = ["data.name=synthetic", "train.epochs=1", "train.probe_size=8"]
IS_ROOT = os.geteuid() == 0


# --------------------------------------------------------------------------- helpers


def run_job(script: str, root: Path, *sets: str, extra: tuple[str, ...] = (), wrapper: list[str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """``python jobs/<script> --config smoke.yaml --root <root> --set ...`` on its own local Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = [sys.executable, *(wrapper or []), str(REPO / "jobs" / script), "--config", str(SMOKE), "--root", str(root),
           *extra, "--set", *sets]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def refused_before_ray(script: str, root: Path, *sets: str, extra: tuple[str, ...] = ()
                       ) -> subprocess.CompletedProcess:
    """The same job script run in this process (``runpy``, as ``python`` runs it), for input
    the job must refuse in its read-only checks, before it starts Ray: reaching Ray fails the
    test. Saves an interpreter's start-up per case; ``test_root_under_a_regular_file`` and the
    Ray cases keep the real process."""
    argv = [str(REPO / "jobs" / script), "--config", str(SMOKE), "--root", str(root), *extra, "--set", *sets]
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0

    def no_ray(*args: object, **kwargs: object) -> dict[str, float]:
        raise AssertionError("the job started Ray: bad input must be refused before any cluster work")

    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setattr(sys, "argv", argv)
        patch.setattr(job_module, "init_ray", no_ray)
        patch.chdir(REPO)
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as stop:
            code = stop.code
    return subprocess.CompletedProcess(argv, code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


def one_error_line(proc: subprocess.CompletedProcess, after_ok: str | None = None) -> str:
    """The job failed with exactly one ``error:`` line, the last one (lines starting with
    ``after_ok`` may follow it), and no traceback anywhere on stderr."""
    tail = proc.stderr[-4000:]
    assert proc.returncode == 2, tail
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", proc.stderr).splitlines() if line.strip()]
    if "Found multiple active Ray instances" in proc.stderr:
        # Ray Train's PlacementGroupCleaner thread looks up its cluster by scanning the machine
        # and dies with a traceback when other Ray instances run there (other test sessions):
        # Ray's noise, not the job's error report.
        lines = [line for line in lines if not line.startswith("(PlacementGroupCleaner pid=")]
    assert not [line for line in lines if "Traceback" in line], tail
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, tail
    assert all(after_ok and line.startswith(after_ok) for line in lines[errors[0] + 1:]), tail
    return lines[errors[0]]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) and the hash of its bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_intact(root: Path, before: dict[str, str], new_ok: tuple[str, ...] = ()) -> None:
    """Old files unchanged, no temporary file left, new files only under ``new_ok`` prefixes."""
    after = snapshot(root)
    assert not [p for p in after if ".tmp-" in p], after
    assert {p: after.get(p) for p in before} == before
    assert all(p.startswith(new_ok) for p in set(after) - set(before)) if new_ok else set(after) == set(before), \
        sorted(set(after) - set(before))


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def unwritable(path: Path) -> Iterator[str]:
    """Make the directory ``path`` unwritable for the job; yields the technique used."""
    if not IS_ROOT:
        path.chmod(0o555)
        try:
            yield "chmod 0o555"
        finally:
            path.chmod(0o755)
    elif _mount("--bind", str(path), str(path)):
        try:
            if not _mount("-o", "remount,bind,ro", str(path)):
                pytest.skip("root without the right to remount read-only; test_root_under_a_regular_file covers it")
            yield "read-only bind mount"
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        pytest.skip("root ignores permissions and may not mount here; test_root_under_a_regular_file covers it")


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A finished source training on the synthetic set, with the config.yaml the CLI writes."""
    path = tmp_path_factory.mktemp("source")
    sets = [*SYNTHETIC, f"data.root={shared_data}", f"data.cache_dir={path.parent / 'cache'}"]
    cfg = absolute_paths(load_config(SMOKE, sets))
    root = StudyRoot(str(path / "root"))
    record_config(cfg, root)
    train_source(cfg, root)
    return path / "root"


def synthetic_sets(source_root: Path, shared_data: Path) -> list[str]:
    return [*SYNTHETIC, f"data.root={shared_data}", f"data.cache_dir={source_root.parent.parent / 'cache'}"]


def copy_root(source_root: Path, dst: Path) -> Path:
    shutil.copytree(source_root, dst)
    return dst


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("case", ["mnist-missing", "mnist-empty", "folder-missing", "folder-empty", "folder-no-images"])
def test_missing_or_empty_data_is_one_line(case: str, tmp_path: Path) -> None:
    name, what = case.split("-", 1)
    data = tmp_path / "data"
    if what != "missing":
        data.mkdir()
    if what == "no-images":
        for split in ("train", "val"):
            (data / split / "n01443537").mkdir(parents=True)
    dataset = "mnist" if name == "mnist" else "imagefolder"
    proc = refused_before_ray("train.py", tmp_path / "root", f"data.name={dataset}", f"data.root={data}",
                              f"data.cache_dir={tmp_path / 'cache'}")
    line = one_error_line(proc)
    expected = {"missing": f"data.root {data} does not exist", "empty": f"data.root {data} is an empty folder",
                "no-images": f"no images under {data / 'train'}"}[what]
    assert line.startswith(f"error: {expected}"), line
    assert not (tmp_path / "root").exists()  # nothing written before the data is checked


def _folder_sets(folder: Path, tmp_path: Path, *more: str) -> list[str]:
    return ["data.name=imagefolder", f"data.root={folder}", "data.image_size=16",
            f"data.cache_dir={tmp_path / 'cache'}",
            "train.epochs=1", "train.probe_size=4", "train.batch_size=4", "data.val_fraction=0.25", *more]


def test_corrupt_jpeg_fails_naming_the_file(shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_folder(shared_data, tmp_path / "data")
    bad = images(folder)[5]
    truncate(bad)
    proc = refused_before_ray("train.py", tmp_path / "root", *_folder_sets(folder, tmp_path))
    line = one_error_line(proc)
    assert line.startswith(f"error: cannot decode {bad}: Image is incomplete or truncated"), line
    assert line.endswith("set data.corrupt=skip to leave unreadable images out")
    assert not (tmp_path / "root").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_corrupt_jpeg_skipped_is_recorded_and_ids_stay_fixed(shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_folder(shared_data, tmp_path / "data")
    bad = images(folder)[5]
    original = truncate(bad)
    root = tmp_path / "root"
    proc = run_job("train.py", root, *_folder_sets(folder, tmp_path, "data.corrupt=skip"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = pq.read_table(root / layout.SKIPPED_FILES)
    assert skipped.schema.metadata[b"coreset.schema_version"] == b"1"
    assert skipped.to_pandas()[["split", "path"]].values.tolist() == [["train", str(bad.relative_to(folder / "train"))]]
    assert len(pd.read_parquet(root / layout.SPLIT)) == 11

    # The file repaired: the ids of this study's tables would shift, so the job refuses the root.
    bad.write_bytes(original)
    before = snapshot(root)
    proc = run_job("gradients.py", root, *_folder_sets(folder, tmp_path, "data.corrupt=skip"))
    line = one_error_line(proc)
    assert line.startswith(f"error: {folder} now leaves out 0 unreadable images, the study in {root} left out 1"), line
    assert_intact(root, before)


@pytest.mark.slow
@pytest.mark.ray
def test_corrupt_jpeg_found_mid_epoch_in_a_file_backed_set(shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_folder(shared_data, tmp_path / "data")
    bad = images(folder)[5]
    truncate(bad)  # the header parses: the load-time check passes, a loader worker finds it
    root = tmp_path / "root"
    proc = run_job("train.py", root, *_folder_sets(folder, tmp_path, "data.max_decoded_gb=0", "data.loader_workers=1"))
    line = one_error_line(proc)
    assert line.startswith(f"error: cannot decode {bad}: Image is incomplete or truncated"), line
    assert "repair or remove the file" in line
    assert not [p for p in snapshot(root) if ".tmp-" in p]


def test_train_and_val_class_folders_differ(shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_folder(shared_data, tmp_path / "data")
    only_val = folder / "val" / "n09999999"
    shutil.copytree(folder / "val" / "n01443537", only_val)
    proc = refused_before_ray("train.py", tmp_path / "root", *_folder_sets(folder, tmp_path))
    line = one_error_line(proc)
    assert line == f"error: class folders of {folder / 'train'} and {folder / 'val'} differ: n09999999", line
    assert not (tmp_path / "root").exists()


# --------------------------------------------------------------------------- checkpoints and tables


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("case", ["copied-from-another-model", "meta-says-another-dataset"])
def test_checkpoint_of_another_model_or_dataset(case: str, source_root: Path, shared_data: Path,
                                                 tmp_path: Path) -> None:
    root = copy_root(source_root, tmp_path / "root")
    sets = synthetic_sets(source_root, shared_data)
    if case == "copied-from-another-model":
        # The gradient stage (Ray actors) reads the trained model from a checkpoint of a linear model.
        other = StudyRoot(str(tmp_path / "other"))
        train_source(absolute_paths(load_config(SMOKE, [*sets, "model.name=linear"])), other)
        shutil.copy(tmp_path / "other" / layout.checkpoint(1), root / layout.checkpoint(1))
        script, rel, expected = "gradients.py", layout.checkpoint(1), "model='linear', expected 'mnist_cnn'"
        new_ok: tuple[str, ...] = (layout.GRADIENTS,)
    else:
        # Source training (a Ray Train worker) resumes from a checkpoint whose metadata was edited.
        state = torch.load(root / layout.RESUME, weights_only=True)
        state["meta"]["dataset"] = "cifar10"
        torch.save(state, root / layout.RESUME)
        (root / layout.SOURCE_DONE).unlink()
        script, rel, expected = "train.py", layout.RESUME, "dataset='cifar10', expected 'synthetic'"
        new_ok = ("source/ray_train/",)
    before = snapshot(root)
    line = one_error_line(run_job(script, root, *sets))
    assert line == f"error: {root / rel} was written for {expected}", line
    assert_intact(root, before, new_ok)


@pytest.mark.parametrize("script", ["gradients.py", "study.py"])
def test_table_of_another_schema_version(script: str, source_root: Path, shared_data: Path, tmp_path: Path) -> None:
    root = copy_root(source_root, tmp_path / "root")
    table = pq.read_table(root / layout.SPLIT)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"coreset.schema_version": b"0"}),
                   root / layout.SPLIT)
    before = snapshot(root)
    extra = ("--stages", "gradients") if script == "study.py" else ()
    line = one_error_line(refused_before_ray(script, root, *synthetic_sets(source_root, shared_data), extra=extra))
    assert line == (f"error: {root / layout.SPLIT} is a 'split' table of schema version 0; "
                    f"this coreset reads 'split' tables of version 1"), line
    assert_intact(root, before)


# --------------------------------------------------------------------------- roots that cannot be written


def test_unwritable_root(source_root: Path, shared_data: Path, tmp_path: Path) -> None:
    root = copy_root(source_root, tmp_path / "root")
    before = snapshot(root)
    with unwritable(root) as how:
        proc = refused_before_ray("gradients.py", root, *synthetic_sets(source_root, shared_data))
    line = one_error_line(proc)
    why = "[errno 13] Permission denied" if how.startswith("chmod") else "[errno 30] Read-only file system"
    # The driver lease is the job's first write (coreset/lease.py).
    assert line.startswith(f"error: cannot write {root / layout.LEASE_LOCK}: ") and line.endswith(why), (how, line)
    assert_intact(root, before)


def test_root_under_a_regular_file(tmp_path: Path, shared_data: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    proc = run_job("train.py", tmp_path / "file" / "study", *SYNTHETIC, f"data.root={shared_data}")
    line = one_error_line(proc)
    assert line.startswith(f"error: cannot create {tmp_path / 'file' / 'study'}: "), line
    assert (tmp_path / "file").read_text() == "not a directory"


# Runs a job with RLIMIT_FSIZE set in its driver once Ray's processes are up: the kernel then
# fails the driver's writes past LIMIT bytes with EFBIG, as a full disk fails them with ENOSPC.
_FSIZE_WRAPPER = """
import resource, runpy, sys
import coreset.cluster.job as job
limit, start_ray = int(sys.argv[1]), job.init_ray
def init_ray(address=None, verbose=False):
    resources = start_ray(address, verbose)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return resources
job.init_ray = init_ray
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("how", ["file-size-limit", "full-tmpfs"])
def test_disk_full(how: str, source_root: Path, shared_data: Path, tmp_path: Path) -> None:
    sets = synthetic_sets(source_root, shared_data)
    if how == "file-size-limit":
        # The driver's first write after Ray starts (the gradient manifest, ~200 bytes) fails.
        root = copy_root(source_root, tmp_path / "root")
        before = snapshot(root)
        proc = run_job("gradients.py", root, *sets, wrapper=["-c", _FSIZE_WRAPPER, "64"])
        # Ray's own log sink, limited too, complains after our line.
        line = one_error_line(proc, after_ok="[*** LOG ERROR")
        assert line == f"error: cannot write {root / layout.GRADIENTS_MANIFEST}: [Errno 27] Error writing bytes " \
                       f"to file. Detail: [errno 27] File too large", line
        assert_intact(root, before, new_ok=(layout.GRADIENTS,))
        return
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root; the file-size-limit case covers a full disk")
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)):
        pytest.skip("this root may not mount a tmpfs; the file-size-limit case covers a full disk")
    try:
        root = copy_root(source_root, disk / "root")
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 16384))  # 16 KB left: the gradient shard (~100 KB) fails
        before = snapshot(root)
        line = one_error_line(run_job("gradients.py", root, *sets))
        shard = root / layout.gradient_shard(1, 0)
        assert line == f"error: cannot write {shard}: [Errno 28] Error writing bytes to file. " \
                       f"Detail: [errno 28] No space left on device", line
        assert_intact(root, before, new_ok=(layout.GRADIENTS,))
        assert not shard.exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --------------------------------------------------------------------------- unit


def test_user_errors_are_found_inside_ray_wrappers() -> None:
    from ray.exceptions import RayTaskError

    storage = StorageError("cannot write x")
    wrapped = RayTaskError("run", "Traceback ...", storage)
    assert user_error(wrapped) is storage
    assert user_error(wrapped.as_instanceof_cause()) is storage  # what ray.get raises

    class Worker(Exception):  # the shapes of Ray Train's WorkerGroupError and its per-rank wrapper
        def __init__(self, **kw: object) -> None:
            super().__init__("Training failed")
            self.__dict__.update(kw)

    ckpt = CheckpointError("c.pt was written for model='a', expected 'b'")
    assert user_error(Worker(worker_failures={0: Worker(_base_exc=ckpt)})) is ckpt
    assert user_error(RuntimeError("a bug")) is None
    assert user_error(RayTaskError("run", "tb", KeyError("bug"))) is None
