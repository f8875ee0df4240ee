"""Model zoo: every model is a :class:`Classifier` (feature body + final linear head), built by name."""
from __future__ import annotations

from coreset.errors import ConfigError
from coreset.models import cifar, imagenet, small  # noqa: F401  (registers the models)
from coreset.models.base import Classifier, InputSpec
from coreset.models.registry import MODELS


def build_model(name: str, spec: InputSpec, pretrained: bool = False) -> Classifier:
    """Build model ``name`` for ``spec``; ``pretrained`` only for torchvision models."""
    builder = MODELS.get(name)
    if pretrained:
        if name not in {"resnet18", "vgg16", "alexnet", "inception_v3"}:
            raise ConfigError(f"model {name!r} has no pretrained weights; only torchvision models do")
        return builder(spec, pretrained=True)  # type: ignore[call-arg]
    return builder(spec)


__all__ = ["Classifier", "InputSpec", "MODELS", "build_model"]
