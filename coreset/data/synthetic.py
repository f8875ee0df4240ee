"""A small learnable synthetic image set for unit tests (never for claims about selection)."""
from __future__ import annotations

import torch

from coreset.data.imageset import ImageSet


def synthetic_splits(n_train: int, num_classes: int, size: int, channels: int = 1) -> tuple[ImageSet, ImageSet]:
    """Class prototypes plus noise, deterministic; the test split is a quarter the size.
    ``channels`` 3 at 32 px gives CIFAR-shaped batches for tests and benchmarks of the
    CIFAR paths (the study's synthetic set has 1)."""
    g = torch.Generator().manual_seed(1234)
    prototypes = torch.rand(num_classes, channels, size, size, generator=g) * 255

    def make(n: int) -> ImageSet:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randn(n, channels, size, size, generator=g) * 60
        images = (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8)
        return ImageSet(labels=labels, classes=[f"class{i}" for i in range(num_classes)], channels=channels,
                        images=images)

    return make(n_train), make(max(num_classes, n_train // 4))
