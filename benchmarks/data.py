"""Streaming a packed dataset from an object store, against the same images in a local folder
and a bare decode loop (issue 16's target: streaming from the object store within 1.2x of
local disk).

The images are Tiny-ImageNet-10's train split (real JPEGs, ImageFolder layout, 64 px), or any
ImageFolder tree or ``.tar.gz`` of one given with ``--data``. The object store is a local S3 server (moto, the
one the tests use; pyarrow reaches it through ``AWS_ENDPOINT_URL``, as it would reach MinIO).
Both the folder's files and the server's objects are in memory (page cache, the server's
store), so the figures compare the read paths, not disks or networks.

(a) ``read``: images per second per core, one thread (``torch.set_num_threads(1)``,
    ``data.loader_workers=0``: reading and decoding in this process), over every train image:
    ``bare`` decodes and resizes the JPEG bytes already in memory (what any loader must do);
    ``folder`` is the file-backed folder (``data.max_decoded_gb=0``, ImageNet's path);
    ``pack (disk)`` and ``pack (s3)`` stream the pack (each shard front to back, one request),
    in order as the gradient stage reads, and shuffled as source training reads;
    ``ray data (s3)`` is Ray Data's ``read_webdataset`` over the same shards (one read task on
    a 1-CPU local Ray; the driver decodes), the alternative reader the issue asks to compare.
(b) ``first_batch``: a fresh process's seconds from its start to its first batch of the
    folder and of the pack on S3 (imports, listing or manifest and index, the first reads).
(c) ``pack``: packing throughput of the pack's own steps (``coreset.data.pack.write_pack``,
    one thread) into a local folder and into S3.

    python benchmarks/data.py [--repeats 3] [--data tiny-imagenet-10.tar.gz] [--shard-mb 4]

Writes data_read.parquet (``reader, order, images, min_s, median_s, images_per_s,
vs_folder, server_cpu_s, client_vs_folder``: the local S3 server's CPU seconds over one pass,
and the ratio without them, since a real store's servers are not on the client's cores),
data_first_batch.parquet and data_pack.parquet.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import harness
import numpy as np
import pandas as pd
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tiny-imagenet-10.tar.gz"
BATCH = 256

sys.path.insert(0, str(REPO / "tests"))  # the tests' local S3 server (moto in a subprocess)
from s3 import moto_version_problem, start_moto, stop_moto  # noqa: E402


def data_config(root: str, cache: str, workers: int = 0) -> object:
    from coreset.config import load_config

    return load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.image_size=64",
                              "data.max_decoded_gb=0", f"data.loader_workers={workers}",
                              f"data.cache_dir={cache}"]).data


def epoch(datasets: object, shuffle: bool) -> Callable[[], None]:
    """One pass over every train image of ``datasets`` as the stages read it."""
    ids = np.arange(len(datasets.train))

    def run() -> None:
        for _ in datasets.batches("train", ids, BATCH, shuffle=shuffle, seed=0):
            pass

    return run


def bare(datasets: object) -> Callable[[], None]:
    """Decode and resize the folder's JPEG bytes, already read into memory."""
    from coreset.data.decode import decode_image, resize_center_crop

    encoded = [datasets.train.encoded(i) for i in range(len(datasets.train))]

    def run() -> None:
        for data in encoded:
            resize_center_crop(decode_image(data, 3), datasets.size)

    return run


def ray_data(uri: str, size: int) -> Callable[[], None]:
    """Ray Data's WebDataset reader over the pack's train shards, decoded in the driver by the
    project's decode path (its own decoder would give other pixels)."""
    import logging

    import pyarrow.fs as pafs
    import ray

    from coreset.data.decode import decode_image, resize_center_crop

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False

    fs, path = pafs.FileSystem.from_uri(uri)
    shards = [f"{path}/{i.base_name}" for i in fs.get_file_info(pafs.FileSelector(path))
              if i.base_name.startswith("train-") and i.base_name.endswith(".tar")]

    def run() -> None:
        ds = ray.data.read_webdataset(sorted(shards), filesystem=fs, decoder=None, concurrency=1)
        for batch in ds.iter_batches(batch_size=BATCH, batch_format="numpy"):
            for data in batch["jpg"]:
                resize_center_crop(decode_image(bytes(data), 3), size)

    return run


def first_batch(root: str, cache: str, env: dict[str, str]) -> float:
    """Seconds from a fresh interpreter's start to its first train batch of ``root``."""
    code = ("import time, numpy as np\nt = time.perf_counter()\nfrom coreset.config import load_config\n"
            "from coreset.data import load_datasets\n"
            f"cfg = load_config(None, ['data.name=imagefolder', 'data.root={root}', 'data.image_size=64', "
            f"'data.max_decoded_gb=0', 'data.loader_workers=0', 'data.cache_dir={cache}'])\n"
            "ds = load_datasets(cfg.data)\n"
            f"next(iter(ds.batches('train', np.arange(len(ds.train)), {BATCH}, shuffle=True)))\n")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **env})
    return time.perf_counter() - start


def pack_rate(train: object, test: object, uri: str, shard_mb: float) -> dict[str, float]:
    from coreset.data.pack import PackSettings, write_pack
    from coreset.storage import StudyRoot

    start = time.perf_counter()
    manifest = write_pack("imagefolder", train, test, StudyRoot(uri), PackSettings(shard_mb=shard_mb))
    seconds = time.perf_counter() - start
    images = sum(manifest["splits"][s]["count"] for s in ("train", "test"))
    megabytes = sum(sh["bytes"] for s in ("train", "test") for sh in manifest["splits"][s]["shards"]) / 1e6
    shards = sum(len(manifest["splits"][s]["shards"]) for s in ("train", "test"))
    return {"images": images, "shards": shards, "seconds": seconds, "images_per_s": images / seconds,
            "mb_per_s": megabytes / seconds}


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--repeats", type=harness.positive, default=3)
    p.add_argument("--data", type=Path, default=DATA, help="an ImageFolder tree or .tar.gz (default %(default)s)")
    p.add_argument("--shard-mb", type=float, default=4.0,
                   help="shard size of the benchmark's pack (default %(default)s: ~2,700 images a shard)")
    args = p.parse_args()
    from coreset.cli import fail

    if not args.data.exists():
        fail(f"{args.data} does not exist; pass --data with an ImageFolder tree or .tar.gz")
    if problem := moto_version_problem():
        fail(problem)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="coreset-bench-data-") as tmp:
        server = start_moto(Path(tmp) / "moto.log")
        try:
            os.environ.update(server.env())
            measure(args, Path(tmp), server)
        finally:
            stop_moto(server)


def _cpu(process: psutil.Process, fn: Callable[[], None]) -> float:
    """CPU seconds ``process`` spent while ``fn`` ran once."""
    before = process.cpu_times()
    fn()
    after = process.cpu_times()
    return (after.user + after.system) - (before.user + before.system)


def measure(args: object, tmp: Path, server: object) -> None:
    from coreset.data import load_datasets
    from coreset.data.formats import load_splits

    server_pid = server.proc.pid
    cache = str(tmp / "cache")
    folder_cfg = data_config(str(args.data), cache)
    train, test = load_splits(folder_cfg)
    bucket = server.new_bucket()
    packs = {"disk": str(tmp / "pack"), "s3": f"s3://{bucket}/pack"}
    pack_rows = [{"into": where, **pack_rate(train, test, uri, args.shard_mb)} for where, uri in packs.items()]
    folder = load_datasets(folder_cfg)
    sets = {"folder": folder, **{f"pack ({k})": load_datasets(data_config(uri, cache)) for k, uri in packs.items()}}
    if any(ds.train.in_memory for ds in sets.values()):
        raise RuntimeError("a set was decoded into memory; the streaming path was not measured")
    pieces: dict[str, Callable[[], None]] = {"bare": bare(folder)}
    for name, ds in sets.items():
        pieces[f"{name}|in order"] = epoch(ds, shuffle=False)
        pieces[f"{name}|shuffled"] = epoch(ds, shuffle=True)
    pieces["ray data (s3)|in order"] = ray_data(packs["s3"], folder.size)
    timings = harness.time_pieces(pieces, args.repeats)
    n = len(folder.train)
    rows = []
    for key, t in timings.items():
        reader, _, order = key.partition("|")
        rows.append({"reader": reader, "order": order or "in order", "images": n, "min_s": t.min_s,
                     "median_s": t.median_s, "images_per_s": n / t.min_s})
    table = pd.DataFrame(rows)
    base = table[table.reader == "folder"].set_index("order").min_s
    table["vs_folder"] = table.min_s / table.order.map(base)
    # The local S3 server shares this machine's cores; a store elsewhere would not. What the
    # server spent per pass (its process CPU time over one more pass) is not the client's cost.
    store = psutil.Process(server_pid)
    table["server_cpu_s"] = [_cpu(store, pieces[k]) if "s3" in k else 0.0 for k in timings]
    table["client_vs_folder"] = (table.min_s - table.server_cpu_s) / table.order.map(base)
    harness.write_result(table, "data_read", args.out,
                         title=f"Reading {n} train images ({args.data.name}), one thread: images/s per core")
    firsts = [{"source": name, "seconds": min(first_batch(uri, cache, server.env()) for _ in range(args.repeats))}
              for name, uri in (("folder", str(args.data)), ("pack (s3)", packs["s3"]))]
    harness.write_result(pd.DataFrame(firsts), "data_first_batch", args.out,
                         title="A fresh process's seconds to its first shuffled train batch (best of repeats)")
    harness.write_result(pd.DataFrame(pack_rows), "data_pack", args.out,
                         title="Packing train + test, one thread (original bytes)")


if __name__ == "__main__":
    sys.exit(main())
