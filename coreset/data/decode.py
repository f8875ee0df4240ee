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
from collections.abc import Sequence

import numpy as np
import torch
import torchcodec
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchcodec.decoders import decode_jpeg

__all__ = ["DECODER", "decode_batch", "decode_image", "encode_jpeg", "is_jpeg", "reason", "resize_center_crop",
           "resize_short_side"]

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


def decode_batch(encoded: Sequence[bytes], channels: int, size: int,
                 device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of encoded images as uint8 ``N×channels×size×size`` on ``device`` (resized and
    center-cropped as :func:`resize_center_crop`), and ``ok``: False where an image did not
    decode (its slot is blank), so the caller names it rather than a decoder traceback.

    On CUDA the batch's JPEGs go to TorchCodec in one call, which decodes them together with
    nvJPEG (one image a call would waste the GPU), and are resized there; the rare other
    formats decode on the CPU and are copied over. nvJPEG's pixels may differ from
    libjpeg-turbo's by a level here and there, so only streamed batches decode on the GPU,
    never the decode caches. On the CPU every image decodes through :func:`decode_image`.
    """
    device = torch.device(device)
    out = torch.zeros(len(encoded), channels, size, size, dtype=torch.uint8, device=device)
    ok = torch.ones(len(encoded), dtype=torch.bool)
    jpegs = [i for i, data in enumerate(encoded) if device.type == "cuda" and is_jpeg(data)]
    for i, image in zip(jpegs, _gpu_jpegs([encoded[i] for i in jpegs], channels, device), strict=True):
        if image is None:
            ok[i] = False
        else:
            out[i] = resize_center_crop(image, size)
    for i in sorted(set(range(len(encoded))) - set(jpegs)):
        try:
            out[i] = resize_center_crop(decode_image(encoded[i], channels), size).to(device)
        except Exception:  # noqa: BLE001 - decoders raise many types for corrupt files
            ok[i] = False
    return out, ok


def _gpu_jpegs(encoded: list[bytes], channels: int, device: torch.device) -> list[torch.Tensor | None]:
    """JPEGs decoded on ``device`` in one nvJPEG call; when one image spoils the call, each
    is decoded alone to find it (``None``)."""
    if not encoded:
        return []
    mode = "RGB" if channels == 3 else "GRAY"
    sources = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
    try:
        return list(decode_jpeg(sources, mode=mode, device=device))
    except Exception:  # noqa: BLE001 - a corrupt image fails the whole batch call
        images: list[torch.Tensor | None] = []
        for source in sources:
            try:
                images.append(decode_jpeg(source, mode=mode, device=device))
            except Exception:  # noqa: BLE001
                images.append(None)
        return images


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
