"""The one interface every model implements: a feature body and a final linear head.

The gradient stage needs both: the last-layer gradient of softmax cross-entropy is
``err ⊗ [h; 1]`` where ``h = body(x)`` are the penultimate features and ``err`` the
softmax error of ``head(h)``. Keeping the split explicit (rather than hooking into
arbitrary architectures) makes those factors a plain forward pass for every model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """Shape of one input image (channels, height, width) and the number of classes."""

    channels: int
    image_size: int
    num_classes: int


class Classifier(nn.Module):
    """``head(body(x))`` with ``body`` returning flat penultimate features."""

    def __init__(self, body: nn.Module, head: nn.Linear, spec: InputSpec) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.spec = spec
        for m in self.modules():
            # In-place activations overwrite layer outputs that per-sample gradient hooks
            # and eval-mode feature capture rely on; the memory saved is not worth it.
            if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.SiLU)) and getattr(m, "inplace", False):
                m.inplace = False

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``h`` (batch, feature_dim)."""
        return self.body(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and penultimate features from one forward pass."""
        h = self.body(x)
        return self.head(h), h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
