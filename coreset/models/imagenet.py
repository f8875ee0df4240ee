"""torchvision's ImageNet-size models, split into feature body and final linear head.

Weights start random (the papers train from scratch); ``pretrained=True`` takes
torchvision's normal download path for users with a network.
"""
from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from coreset.errors import ConfigError
from coreset.models.base import Classifier, InputSpec
from coreset.models.registry import MODELS


def _split(model: nn.Module, head_path: str) -> tuple[nn.Module, nn.Linear]:
    """Replace the final linear layer at ``head_path`` by Identity; return (body, head)."""
    *parents, last = head_path.split(".")
    owner = model
    for p in parents:
        owner = getattr(owner, p)
    head = owner[int(last)] if last.isdigit() else getattr(owner, last)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{head_path} is {type(head).__name__}, not Linear")
    if last.isdigit():
        owner[int(last)] = nn.Identity()
    else:
        setattr(owner, last, nn.Identity())
    return model, head


def _torchvision(name: str, head_path: str, min_size: int, **kwargs: object) -> Callable[[InputSpec], Classifier]:
    def build(spec: InputSpec, pretrained: bool = False) -> Classifier:
        if spec.channels != 3:
            raise ConfigError(f"{name} needs 3-channel images, got {spec.channels}")
        if spec.image_size < min_size:
            raise ConfigError(f"{name} needs images of at least {min_size} px, got {spec.image_size}")
        ctor = getattr(torchvision.models, name)
        if pretrained:
            model = ctor(weights="DEFAULT", **kwargs)
            model, old = _split(model, head_path)
            head = nn.Linear(old.in_features, spec.num_classes) if old.out_features != spec.num_classes else old
        else:
            model, head = _split(ctor(weights=None, num_classes=spec.num_classes, **kwargs), head_path)
        return Classifier(model, head, spec)

    build.__doc__ = f"torchvision {name} (input at least {min_size} px)."
    return build


MODELS.register("resnet18")(_torchvision("resnet18", "fc", 32))
MODELS.register("vgg16")(_torchvision("vgg16", "classifier.6", 32))
MODELS.register("alexnet")(_torchvision("alexnet", "classifier.6", 63))
MODELS.register("inception_v3")(
    _torchvision("inception_v3", "fc", 75, aux_logits=False, init_weights=True, transform_input=False)
)
