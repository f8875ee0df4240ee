"""The one decode path on batches (``decode.decode_batch``): the CPU batch equals the
per-image path on real Tiny-ImageNet JPEGs; a corrupt image is flagged, not raised; on a
GPU the nvJPEG batch agrees with the CPU decode."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coreset.data.decode import decode_batch, decode_image, resize_center_crop


def _jpegs(shared: Path, n: int) -> list[bytes]:
    with tarfile.open(shared / "tiny-imagenet-10.tar.gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".JPEG")),
                         key=lambda m: m.name)[:n]
        return [tar.extractfile(m).read() for m in members]  # type: ignore[union-attr]


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def batch(shared_data: Path) -> list[bytes]:
    """Real JPEGs, a PNG (another format), a truncated JPEG and bytes that are no image."""
    jpegs = _jpegs(shared_data, 6)
    png = _png(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    return [*jpegs[:3], png, jpegs[3][:200], b"not an image", *jpegs[4:]]


def test_cpu_batch_equals_the_per_image_path_and_flags_what_does_not_decode(batch: list[bytes]) -> None:
    images, ok = decode_batch(batch, 3, 32)
    assert images.shape == (len(batch), 3, 32, 32) and images.dtype == torch.uint8
    assert ok.tolist() == [True, True, True, True, False, False, True, True]
    for i in np.flatnonzero(ok.numpy()):
        assert torch.equal(images[i], resize_center_crop(decode_image(batch[i], 3), 32))
    assert not images[~ok].any()
    grey, ok_grey = decode_batch(batch, 1, 64)
    assert grey.shape[1] == 1 and torch.equal(ok_grey, ok)
    assert torch.equal(grey[0], decode_image(batch[0], 1))  # 64 px already: no resize


@pytest.mark.cuda
def test_gpu_batch_agrees_with_the_cpu_decode(batch: list[bytes]) -> None:
    cpu, ok = decode_batch(batch, 3, 64)
    gpu, ok_gpu = decode_batch(batch, 3, 64, device="cuda")
    assert gpu.device.type == "cuda" and torch.equal(ok_gpu, ok)
    diff = (gpu.cpu().int() - cpu.int()).abs()
    assert diff.float().mean() < 1.0 and diff.max() <= 8  # nvJPEG's IDCT may differ by a level here and there
