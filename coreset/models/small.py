"""Small models of the gradient-magnitude paper: its MNIST CNN, a linear classifier, a 5-layer CNN."""
from __future__ import annotations

from torch import nn

from coreset.errors import ConfigError
from coreset.models.base import Classifier, InputSpec
from coreset.models.registry import MODELS


def _conv_out(size: int, kernel: int, pool: int = 2, padding: int = 0) -> int:
    return (size + 2 * padding - kernel + 1) // pool


@MODELS.register("mnist_cnn")
def mnist_cnn(spec: InputSpec) -> Classifier:
    """2 conv + 2 FC: the paper's MNIST network (about 99.4% on MNIST)."""
    s = _conv_out(_conv_out(spec.image_size, 5), 5)
    if s < 1:
        raise ConfigError(f"mnist_cnn needs images of at least 12 px, got {spec.image_size}")
    body = nn.Sequential(
        nn.Conv2d(spec.channels, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * s * s, 128), nn.ReLU(),
    )
    return Classifier(body, nn.Linear(128, spec.num_classes), spec)


@MODELS.register("linear")
def linear(spec: InputSpec) -> Classifier:
    """Multinomial logistic regression on raw pixels (features are the pixels)."""
    d = spec.channels * spec.image_size * spec.image_size
    return Classifier(nn.Flatten(), nn.Linear(d, spec.num_classes), spec)


@MODELS.register("cnn5")
def cnn5(spec: InputSpec) -> Classifier:
    """The paper's 'vanilla' five-layer CNN for CIFAR: 3 conv (each + max-pool) and 2 FC."""
    s = spec.image_size // 8
    if s < 1:
        raise ConfigError(f"cnn5 needs images of at least 8 px, got {spec.image_size}")
    body = nn.Sequential(
        nn.Conv2d(spec.channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * s * s, 256), nn.ReLU(),
    )
    return Classifier(body, nn.Linear(256, spec.num_classes), spec)


@MODELS.register("mlp512")
def mlp512(spec: InputSpec) -> Classifier:
    """One hidden layer of 512 units: the penultimate width of ResNet-18 (so GradSimCore's ``emb``
    has ImageNet's shape) at almost a linear model's cost, for scale studies on synthetic data."""
    d = spec.channels * spec.image_size * spec.image_size
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(d, 512), nn.ReLU()), nn.Linear(512, spec.num_classes), spec)
