"""32-px models of the CIFAR literature (DeepCore's forms): VGG16 with BatchNorm and ResNet-18."""
from __future__ import annotations

import torch
from torch import nn

from coreset.models.base import Classifier, InputSpec
from coreset.models.registry import MODELS

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


@MODELS.register("vgg16_bn")
def vgg16_bn(spec: InputSpec) -> Classifier:
    """VGG16-BN adapted to 32 px: 13 conv+BN layers, global pooling, one linear head.

    Inputs smaller than 32 px (MNIST) are padded up to 32 in the first convolution,
    as DeepCore does.
    """
    layers: list[nn.Module] = []
    c = spec.channels
    first = True
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        pad = 1 + max(0, (32 - spec.image_size) // 2) if first else 1
        layers += [nn.Conv2d(c, int(v), 3, padding=pad), nn.BatchNorm2d(int(v)), nn.ReLU()]
        c, first = int(v), False
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, nn.Linear(512, spec.num_classes), spec)


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@MODELS.register("resnet18_cifar")
def resnet18_cifar(spec: InputSpec) -> Classifier:
    """ResNet-18 in its CIFAR form: 3x3 stem, no max-pool, [2, 2, 2, 2] basic blocks."""
    blocks: list[nn.Module] = [
        nn.Conv2d(spec.channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
    ]
    c = 64
    for width, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        blocks += [BasicBlock(c, width, stride), BasicBlock(width, width, 1)]
        c = width
    body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, nn.Linear(512, spec.num_classes), spec)
