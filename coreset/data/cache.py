"""The machine-local cache of decoded images (``data.cache_dir``): a uint8 array kept as
``.npy`` (no pickle) under a key that names everything the pixels depend on, with the
``(index, reason)`` of the images that did not decode beside it. Writes are atomic (tmp +
rename): concurrent jobs and trials may fill the same entry, and none reads a partial one.
The cache only saves time: a write that fails (a full disk) is logged, never fatal.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from coreset.errors import StorageError
from coreset.storage import StudyRoot

__all__ = ["cache_key", "cached_decode", "write_cache_file"]
log = logging.getLogger("coreset")

Decoded = tuple[torch.Tensor, list[tuple[int, str]]]


def cache_key(*parts: object) -> str:
    """A short stable name of ``parts`` (strings, numbers, JSON-able dicts, numpy arrays)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.tobytes() if isinstance(part, np.ndarray) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def cached_decode(path: Path, decode: Callable[[], Decoded]) -> Decoded:
    """The decoded images at ``path`` (a ``.npy``), or ``decode()``'s, which are then kept
    there; a hit gives the unreadable list too, so the caller's corrupt-image policy applies
    exactly as after a fresh decode."""
    bad_path = path.with_suffix(".unreadable.json")
    if path.is_file():
        bad = json.loads(bad_path.read_text()) if bad_path.is_file() else []
        return torch.from_numpy(np.load(path, allow_pickle=False)), [(int(i), str(r)) for i, r in bad]
    images, bad = decode()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    try:
        write_cache_file(bad_path, json.dumps(bad).encode())  # before the .npy, whose presence means "cached"
        np.save(tmp, images.numpy(), allow_pickle=False)
        tmp.replace(path)
    except (OSError, StorageError) as e:
        tmp.unlink(missing_ok=True)
        log.warning("cannot cache decoded images in %s: %s", path.parent, e)
    return images, bad


def write_cache_file(path: Path, data: bytes) -> None:
    """Atomic, like every write of a study root (concurrent jobs may fill the same cache)."""
    StudyRoot(str(path.parent)).write_bytes(path.name, data)
