"""The one image decode path of the project: encoded bytes -> uint8 ``C×H×W`` tensor.

Folders, the decode cache and packed shards all decode here, so a pack and the folder it
came from give the same pixels. JPEGs (ImageNet's format, whatever their file name says)
go to TorchCodec's ``decode_jpeg``: on one core it decodes Tiny-ImageNet JPEGs 2.7x as fast
as PIL and 1.1x as fast as torchvision's (deprecated) decoder, with pixels equal to PIL's
(``benchmarks/decode.py``; NOTES.md). Other formats (PNG, BMP, WebP: rare in image
datasets) go through PIL. Resizing is torchvision's tensor resize, the same for both.
"""
from __future__ import annotations

import io
import re

import numpy as np
import torch
import torchcodec
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchcodec.decoders import decode_jpeg

__all__ = ["DECODER", "decode_image", "encode_jpeg", "is_jpeg", "reason", "resize_center_crop", "resize_short_side"]

# Part of every decode-cache key: another decoder may give other pixels.
DECODER = f"torchcodec-{torchcodec.__version__.split('+')[0]}"
_JPEG_MAGIC = b"\xff\xd8\xff"
# TorchCodec prefixes its messages with the C++ function and source line.
_SOURCE_PREFIX = re.compile(r"^.*?\.cpp:\d+,\s*")


def is_jpeg(data: bytes) -> bool:
    return data[:3] == _JPEG_MAGIC


def decode_image(data: bytes, channels: int) -> torch.Tensor:
    """Decode ``data`` to uint8 ``channels×H×W``; raises on unreadable bytes (see :func:`reason`)."""
    if is_jpeg(data):
        return decode_jpeg(data, mode="RGB" if channels == 3 else "GRAY")
    with Image.open(io.BytesIO(data)) as im:
        arr = np.array(im.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    return torch.from_numpy(arr[:, :, None] if arr.ndim == 2 else arr).permute(2, 0, 1).contiguous()


def reason(e: BaseException) -> str:
    """One line saying why an image could not be read."""
    text = str(e).strip().splitlines()
    return _SOURCE_PREFIX.sub("", text[0]) if text else type(e).__name__


def resize_short_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of a ``C×H×W`` uint8 image so its shorter side is ``size``."""
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    return F.resize(image, [max(size, round(h * scale)), max(size, round(w * scale))], antialias=True)


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The eval transform of ImageNet practice: shorter side to ``size``, then the center square.
    Possibly a strided view (no copy when nothing is resized): assign it into a batch."""
    if tuple(image.shape[-2:]) != (size, size):
        image = F.center_crop(resize_short_side(image, size), [size, size])
    return image


def encode_jpeg(image: torch.Tensor, quality: int) -> bytes:
    """JPEG bytes of a uint8 ``C×H×W`` image (packs re-encoded at a smaller size)."""
    from torchcodec.encoders import JpegEncoder

    return JpegEncoder(image).to_tensor(quality=quality).numpy().tobytes()
