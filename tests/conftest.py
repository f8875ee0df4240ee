"""Shared fixtures: the real datasets in ../shared/data and small configs."""
from __future__ import annotations

import os
from pathlib import Path

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
def cache_dir() -> Path:
    """The user's extraction/decode cache: archives are extracted and decoded once per machine."""
    return Path(os.environ.get("CORESET_CACHE", "~/.cache/coreset")).expanduser()
