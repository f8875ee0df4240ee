"""The model registry: ``MODELS.get(name)(spec) -> Classifier``."""
from __future__ import annotations

from collections.abc import Callable

from coreset.models.base import Classifier, InputSpec
from coreset.registry import Registry

MODELS: Registry[Callable[[InputSpec], Classifier]] = Registry("model")
