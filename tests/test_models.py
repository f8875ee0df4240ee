"""Every model: forward on its input size, penultimate features and final linear head."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from coreset.errors import ConfigError
from coreset.models import MODELS, InputSpec, build_model

CASES = [
    ("mnist_cnn", InputSpec(1, 28, 10), 128),
    ("linear", InputSpec(1, 28, 10), 784),
    ("mlp512", InputSpec(1, 8, 1000), 512),
    ("cnn5", InputSpec(3, 32, 10), 256),
    ("vgg16_bn", InputSpec(3, 32, 10), 512),
    ("vgg16_bn", InputSpec(1, 28, 10), 512),
    ("resnet18_cifar", InputSpec(3, 32, 100), 512),
    ("resnet18", InputSpec(3, 64, 10), 512),
    ("vgg16", InputSpec(3, 32, 10), 4096),
    ("alexnet", InputSpec(3, 64, 10), 4096),
    ("inception_v3", InputSpec(3, 75, 10), 2048),
]


def test_every_registered_model_is_covered() -> None:
    assert {name for name, _, _ in CASES} == set(MODELS.names())


@pytest.mark.parametrize("name, spec, feature_dim", CASES, ids=[f"{c[0]}-{c[1].image_size}" for c in CASES])
def test_forward_features_and_head(name: str, spec: InputSpec, feature_dim: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, spec).eval()
    x = torch.randn(2, spec.channels, spec.image_size, spec.image_size)
    with torch.no_grad():
        logits, h = model.forward_with_features(x)
        assert logits.shape == (2, spec.num_classes)
        assert h.shape == (2, feature_dim) and model.feature_dim == feature_dim
        assert isinstance(model.head, nn.Linear) and model.head.out_features == spec.num_classes
        assert torch.allclose(model.head(h), logits) and torch.allclose(model(x), logits)
        assert torch.allclose(model.features(x), h)
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="needs 3-channel"):
        build_model("resnet18", InputSpec(1, 64, 10))
    with pytest.raises(ConfigError, match="at least 75 px"):
        build_model("inception_v3", InputSpec(3, 32, 10))
    with pytest.raises(KeyError, match="unknown model 'nope'; allowed: alexnet"):
        build_model("nope", InputSpec(3, 32, 10))
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_model("mnist_cnn", InputSpec(1, 28, 10), pretrained=True)
