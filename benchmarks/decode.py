"""JPEG decode rate per core: TorchCodec against torchvision and PIL on the same bytes.

The project decodes every image through one function (``coreset.data.decode``); this
measurement chose its decoder. Each decoder turns the same in-memory JPEG bytes (the first
``--images`` train images of ``tiny-imagenet-10.tar.gz``, 64 px) into a uint8 RGB ``C×H×W``
tensor, on one thread (``torch.set_num_threads(1)``): images/s is then per core.

    python benchmarks/decode.py [--images 1000] [--repeats 3]

Writes decode.parquet (``decoder, images, min_s, median_s, images_per_s``; the rate from min_s).
"""
from __future__ import annotations

import io
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import harness
import numpy as np
import pandas as pd
import torch
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-10.tar.gz"


def jpeg_bytes(archive: Path, n: int) -> list[bytes]:
    """The first ``n`` train JPEGs of the archive (sorted by name), as bytes."""
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and "/train/" in m.name
                          and m.name.endswith(".JPEG")), key=lambda m: m.name)[:n]
        return [tar.extractfile(m).read() for m in members]  # type: ignore[union-attr]


def decoders() -> dict[str, Callable[[bytes], torch.Tensor]]:
    from torchcodec.decoders import decode_jpeg as torchcodec_jpeg
    from torchvision.io import decode_jpeg as torchvision_jpeg

    def pil(data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)

    return {
        "torchcodec": lambda data: torchcodec_jpeg(data, mode="RGB"),
        "torchvision": lambda data: torchvision_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=_rgb()),
        "pil": pil,
    }


def _rgb() -> object:
    from torchvision.io import ImageReadMode

    return ImageReadMode.RGB


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--images", type=harness.positive, default=1000)
    p.add_argument("--repeats", type=harness.positive, default=3)
    p.add_argument("--archive", type=Path, default=DATA)
    args = p.parse_args()
    if not args.archive.is_file():
        from coreset.cli import fail

        fail(f"{args.archive} does not exist; pass --archive tiny-imagenet-10.tar.gz")
    torch.set_num_threads(1)
    data = jpeg_bytes(args.archive, args.images)
    fns = decoders()
    reference = [fns["pil"](d) for d in data[:50]]
    for name, fn in fns.items():  # same pixels from every decoder (all three wrap libjpeg-turbo here)
        if not all(torch.equal(fn(d), r) for d, r in zip(data[:50], reference, strict=True)):
            print(f"note: {name} decodes other pixels than PIL")
    timings = harness.time_pieces({k: (lambda fn=fn: [fn(d) for d in data]) for k, fn in fns.items()}, args.repeats)
    rows = [{"decoder": k, "images": len(data), "min_s": t.min_s, "median_s": t.median_s,
             "images_per_s": len(data) / t.min_s} for k, t in timings.items()]
    harness.write_result(pd.DataFrame(rows), "decode", args.out,
                         title=f"JPEG decode, {len(data)} Tiny-ImageNet images (64 px), one thread")


if __name__ == "__main__":
    sys.exit(main())
