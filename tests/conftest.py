"""Shared fixtures: the real datasets in ../shared/data and small configs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CORESET_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; set CORESET_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mnist_rows(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """240 real MNIST training images of classes 0-2 as 7x7 mean-pooled pixel features."""
    from coreset.data.idx import read_idx

    images = read_idx(shared_data / "mnist" / "train-images-idx3-ubyte.gz")
    labels = read_idx(shared_data / "mnist" / "train-labels-idx1-ubyte.gz").astype(np.int64)
    keep = np.flatnonzero(labels < 3)[:240]
    pooled = images[keep].reshape(-1, 7, 4, 7, 4).astype(np.float64).mean(axis=(2, 4)).reshape(-1, 49) / 255
    return pooled, labels[keep]


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The user's extraction/decode cache: archives are extracted and decoded once per machine."""
    return Path(os.environ.get("CORESET_CACHE", "~/.cache/coreset")).expanduser()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server on a free loopback port for the whole session (see tests/s3.py)."""
    from s3 import moto_version_problem, start_moto, stop_moto

    problem = moto_version_problem()
    if problem:
        pytest.fail(problem)
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    stop_moto(server)


@pytest.fixture
def s3_env(moto_s3, monkeypatch: pytest.MonkeyPatch):
    """This process (and every subprocess and local Ray worker it starts) uses the moto server
    as S3, with test credentials from the environment only."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in moto_s3.env().items():
        monkeypatch.setenv(var, value)
    return moto_s3


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A fresh, empty bucket on the moto server."""
    return s3_env.new_bucket()
