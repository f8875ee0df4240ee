"""JPEG decode rate per core: TorchCodec against torchvision and PIL on the same bytes; and
the project's file-backed loader against a bare decode loop over the same files.

(a) The project decodes every image through one function (``coreset.data.decode``); this
    measurement chose its decoder. Each decoder turns the same in-memory JPEG bytes (the
    first ``--images`` train images of ``tiny-imagenet-10.tar.gz``, 64 px) into a uint8 RGB
    ``C×H×W`` tensor.
(b) Tiny-ImageNet-10's train split as a file-backed folder (``data.max_decoded_gb=0``, the
    path ImageNet takes) through ``Datasets.batches`` with ``loader_workers=0`` (decoding in
    this process), against a bare loop that reads each of the same files, decodes it and
    resizes it to the study's size: what any loader must do. The loader's extra is batching,
    collation and the float normalisation it hands the model. Target (issue 11): the loader
    within 1.2x of the bare loop.

Everything runs on one thread (``torch.set_num_threads(1)``): images/s is then per core. Where
CUDA is present, a last row decodes the same bytes on the GPU in batches of 256
(``decode.decode_batch``: one nvJPEG call a batch): images/s per GPU.

    python benchmarks/decode.py [--images 1000] [--repeats 3]

Writes decode.parquet (``decoder, images, min_s, median_s, images_per_s``; the rate from
min_s) and decode_loader.parquet (``piece, images, min_s, median_s, images_per_s,
vs_bare``).
"""
from __future__ import annotations

import io
import sys
import tarfile
import tempfile
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


def loader_vs_bare(archive: Path, repeats: int) -> pd.DataFrame:
    """Part (b): the file-backed loader and the bare loop over Tiny-ImageNet-10's train files."""
    from coreset.config import load_config
    from coreset.data import load_datasets
    from coreset.data.decode import decode_image, resize_center_crop

    with tempfile.TemporaryDirectory() as cache:
        cfg = load_config(None, ["data.name=imagefolder", f"data.root={archive}", "data.image_size=64",
                                 "data.max_decoded_gb=0", "data.loader_workers=0", f"data.cache_dir={cache}"])
        datasets = load_datasets(cfg.data)
        train = datasets.train
        if train.in_memory:
            raise RuntimeError("the folder was decoded into memory; the file-backed path was not measured")
        ids = np.arange(len(train))
        paths = [train.source(int(i)) for i in ids]

        def loader() -> None:
            for _ in datasets.batches("train", ids, 256):
                pass

        def bare() -> None:
            for path in paths:
                resize_center_crop(decode_image(Path(path).read_bytes(), 3), datasets.size)

        timings = harness.time_pieces({"bare": bare, "loader": loader}, repeats)
    return pd.DataFrame([{"piece": k, "images": len(ids), "min_s": t.min_s, "median_s": t.median_s,
                          "images_per_s": len(ids) / t.min_s, "vs_bare": t.min_s / timings["bare"].min_s}
                         for k, t in timings.items()])


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
    pieces = {k: (lambda fn=fn: [fn(d) for d in data]) for k, fn in fns.items()}
    sync = None
    if torch.cuda.is_available():  # nvJPEG: the batch in one call (the project's decode_batch), per GPU
        from coreset.data.decode import decode_batch

        pieces["torchcodec (cuda, batches of 256)"] = lambda: [decode_batch(data[i: i + 256], 3, 64, "cuda")
                                                               for i in range(0, len(data), 256)]
        sync = torch.cuda.synchronize
    timings = harness.time_pieces(pieces, args.repeats, sync=sync)
    rows = [{"decoder": k, "images": len(data), "min_s": t.min_s, "median_s": t.median_s,
             "images_per_s": len(data) / t.min_s} for k, t in timings.items()]
    harness.write_result(pd.DataFrame(rows), "decode", args.out,
                         title=f"JPEG decode, {len(data)} Tiny-ImageNet images (64 px), one thread")
    harness.write_result(loader_vs_bare(args.archive, args.repeats), "decode_loader", args.out,
                         title="Tiny-ImageNet-10 train files: the file-backed loader against a bare decode loop, "
                               "one thread")


if __name__ == "__main__":
    sys.exit(main())
