"""Per-dataset normalisation and augmentation, applied to whole uint8 batches.

Batched tensor ops (one gather for all random crops) instead of per-image PIL
transforms keep augmentation a small fraction of a CPU training step, and run where the
images are: a batch already on a GPU (the retraining stage's resident data) is augmented
there. The random draws (offsets, flips, crop boxes) always come from the CPU ``generator``
and are moved to the images' device, so a seed gives the same augmentation on every device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "idx": ((0.1307,), (0.3081,)),  # KMNIST, EMNIST: MNIST-like strokes on black (their own: ~0.18, ~0.34)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5,), (0.25,)),
}
AUGMENTATION = {
    "mnist": "none",
    "fashion_mnist": "none",
    "idx": "none",
    "cifar10": "crop_flip",
    "cifar100": "crop_flip",
    "imagefolder": "resized_crop_flip",
    "synthetic": "none",
}


@dataclass(frozen=True)
class BatchTransform:
    """uint8 (B, C, H, W) -> normalised float; training adds the dataset's augmentation."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str
    size: int

    @classmethod
    def for_dataset(cls, name: str, channels: int, size: int, augment: bool) -> BatchTransform:
        mean, std = _STATS[name]
        if len(mean) != channels:
            mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
        return cls(mean, std, AUGMENTATION[name] if augment else "none", size)

    def __call__(self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float().div_(255.0)
        if train and self.augmentation == "crop_flip":
            x = random_crop(x, padding=4, generator=generator)
            x = random_flip(x, generator)
        elif train and self.augmentation == "resized_crop_flip":
            x = random_resized_crop(x, self.size, generator)
            x = random_flip(x, generator)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = center_resize(x, self.size)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)  # x is this call's own tensor: in place, no temporaries


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and take one random crop of the original size per image."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h)).to(x.device, non_blocking=True)
    cols = (ox[:, None] + torch.arange(w)).to(x.device, non_blocking=True)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Horizontal flip of a random half of the batch."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device, non_blocking=True)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_resized_crop(x: torch.Tensor, size: int, generator: torch.Generator | None = None,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style crop (area in ``scale``, aspect in ``ratio``) resized to ``size``, per image."""
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(*scale, generator=generator) * h * w
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).round().clamp(1, w)
    ch = torch.sqrt(area / aspect).round().clamp(1, h)
    x0 = (torch.rand(b, generator=generator) * (w - cw + 1)).floor()
    y0 = (torch.rand(b, generator=generator) * (h - ch + 1)).floor()
    # Affine grid mapping the output square onto each crop box (align_corners=False coordinates).
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw / w
    theta[:, 1, 1] = ch / h
    theta[:, 0, 2] = (2 * x0 + cw) / w - 1
    theta[:, 1, 2] = (2 * y0 + ch) / h - 1
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def center_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and center-crop (eval transform for odd sizes)."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear",
                      align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]
