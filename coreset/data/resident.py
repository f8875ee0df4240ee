"""Decoded images held on the device that trains on them: retraining's resident data.

A retraining trial on a GPU gets one or two CPU cores (``retrain.cpus_per_trial``). Slicing,
augmenting and normalising CIFAR batches on those cores and copying each one over would leave
the GPU waiting; held on the GPU as uint8 (CIFAR-10's 50k train images are 154 MB), each
batch is an index into device memory and a few batched kernels. The batches come from
:class:`coreset.data.loader.Batches` unchanged (its in-memory branch slices wherever the images
are), so the order and the augmentation draws are those of the CPU path: the same seed gives
the same batches on either device.

Only what is already decoded in memory goes over: a split decoded in memory, or a subset
gathered from a streaming pack and decoded (:mod:`coreset.data.gather`). Anything else keeps
the loader (decoding files per batch in loader workers). The bytes held are bounded by
:func:`budget_bytes`.
"""
from __future__ import annotations

import dataclasses

import torch

from coreset.data.imageset import ImageSet

# The part of a trial's share of GPU memory its images may take: the rest is for the
# model's weights, optimiser state and activations (and the other packs sharing the GPU).
RESIDENT_SHARE = 0.5


def budget_bytes(device: torch.device, max_gb: float, gpu_share: float) -> int:
    """Bytes of uint8 images a pack process may hold on ``device``: ``max_gb`` (0: none), and
    on CUDA at most :data:`RESIDENT_SHARE` of the smaller of the free memory and this
    process's ``gpu_share`` of the device (``retrain.gpus_per_trial``; packs sharing a GPU
    each take their part). On the CPU images already decoded in memory cost nothing more,
    so ``max_gb`` only switches the path on or off there."""
    if max_gb <= 0:
        return 0
    cap = int(max_gb * 1e9)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        cap = min(cap, int(RESIDENT_SHARE * min(free, total * min(1.0, gpu_share))))
    return cap


def held_bytes(ds: ImageSet, device: torch.device) -> int:
    """Bytes ``ds``'s decoded images would add on ``device`` (0: already there)."""
    assert ds.images is not None
    return 0 if same_device(ds.images.device, device) else ds.images.numel() * ds.images.element_size()


def on_device(ds: ImageSet, device: torch.device) -> ImageSet:
    """``ds`` (decoded in memory) with its images and labels on ``device``: the same set when
    they are there already."""
    assert ds.images is not None
    if same_device(ds.images.device, device):
        return ds
    return dataclasses.replace(ds, images=ds.images.to(device), labels=ds.labels.to(device))


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one (``cuda`` is the current CUDA device, ``cuda:0`` by index)."""
    return _indexed(a) == _indexed(b)


def _indexed(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
