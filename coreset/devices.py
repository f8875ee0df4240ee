"""Which device a stage computes on, and its mixed precision: one rule for every stage."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from coreset.errors import ConfigError


def pick_device(use_gpu: str) -> torch.device:
    """CUDA when present (or required), CPU otherwise."""
    if use_gpu == "yes" and not torch.cuda.is_available():
        raise ConfigError("train.use_gpu is 'yes' but no CUDA device is visible")
    return torch.device("cuda" if use_gpu != "no" and torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager[object]:
    """bfloat16 autocast on CUDA (no loss scaling needed: bf16 has float32's range); nothing
    on CPU, where bf16 without AVX-512 BF16 ran a CIFAR/MNIST step 8x slower than float32."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
