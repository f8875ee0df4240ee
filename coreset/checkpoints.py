"""Model checkpoints in the study root: tensors and plain metadata only.

Saved with ``torch.save`` and always loaded with ``weights_only=True``, so loading a
checkpoint can never run code. The metadata names the model, dataset and class count,
and a checkpoint of another model or dataset is refused with one line.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch

from coreset.errors import CheckpointError
from coreset.storage import StudyRoot


def save_checkpoint(root: StudyRoot, rel: str, state: Mapping[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    root.write_bytes(rel, buf.getvalue())


def load_checkpoint(root: StudyRoot, rel: str, expect: Mapping[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``rel``; every key of ``expect`` must equal the checkpoint's ``meta`` entry."""
    data = root.read_bytes(rel)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"{root.url(rel)} is not a readable checkpoint: {str(e).splitlines()[0]}") from None
    meta = state.get("meta", {})
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise CheckpointError(f"{root.url(rel)} was written for {key}={meta.get(key)!r}, expected {want!r}")
    return state


def model_meta(model_name: str, dataset: str, num_classes: int, image_size: int) -> dict[str, Any]:
    """The identity a checkpoint carries and is checked against on load."""
    return {"model": model_name, "dataset": dataset, "num_classes": num_classes, "image_size": image_size}
