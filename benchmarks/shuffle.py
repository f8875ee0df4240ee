"""Does training from a streaming pack (shards in a seeded order through a shuffle buffer)
lose accuracy against a full random permutation? Source training on real Tiny-ImageNet-10
(10 classes, 4.5k train images after the val split) from the folder (decoded in memory:
a full permutation each epoch) and from its pack forced to stream (``data.max_decoded_gb=0``)
at each ``--buffers`` size and ``--chunks`` run length (``data.shuffle_chunk``; a run longer
than a shard reads whole shards), same model, seed and epochs.

The pack is cut by class with ``--shard-mb`` (default 2.5: one class of ~500 JPEGs a shard,
as a 256 MB ImageNet shard holds 1-2 classes); a buffer of ``B`` images then draws each batch
from about ``2B / 450`` shards' worth of images (README "Shuffling a streamed pack").

    python benchmarks/shuffle.py [--epochs 4] [--buffers 2000 500] [--chunks 64 100000] [--work /tmp/shuffle]

Writes shuffle.parquet (``source, buffer, chunk, shards, epochs, test_acc, train_s``).
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import harness
import pandas as pd
import torch

from coreset.config import DataConfig, ModelConfig, StudyConfig, TrainConfig
from coreset.data.formats import load_splits
from coreset.data.pack import PackSettings, write_pack
from coreset.stages.train import train_source
from coreset.storage import StudyRoot

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-10.tar.gz"


def pack(cfg: DataConfig, out: Path, shard_mb: float) -> int:
    """Pack ``cfg``'s dataset into ``out`` in this process; returns the train shards."""
    manifest = write_pack(cfg.name, *load_splits(cfg), StudyRoot(str(out)), PackSettings(shard_mb=shard_mb))
    return len(manifest["splits"]["train"]["shards"])


def accuracy(study: StudyConfig, root: Path) -> tuple[float, float]:
    """(test accuracy at the last epoch, seconds) of one source training under ``root``."""
    start = time.perf_counter()
    train_source(study, StudyRoot(str(root)), device=torch.device("cpu"))
    log = pd.read_parquet(root / "source" / "train_log.parquet")
    return float(log.test_acc.iloc[-1]), time.perf_counter() - start


def main() -> None:
    p = harness.parser(__doc__.split("\n")[0])
    p.add_argument("--epochs", type=harness.positive, default=4)
    p.add_argument("--buffers", type=harness.positive, nargs="+", default=[2000, 500])
    p.add_argument("--chunks", type=harness.positive, nargs="+", default=[64, 100_000])
    p.add_argument("--shard-mb", type=float, default=2.5)
    p.add_argument("--size", type=harness.positive, default=32, help="image size the model sees")
    p.add_argument("--work", type=Path, default=None, help="folder for the cache, pack and roots (default: a temp dir)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="shuffle-"))
    data = DataConfig(name="imagefolder", root=str(DATA), image_size=args.size, cache_dir=str(work / "cache"),
                      loader_workers=1)
    shards = pack(data, work / "pack", args.shard_mb)
    study = StudyConfig(name="shuffle", seed=0, data=data, model=ModelConfig(name="cnn5"),
                        train=TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, probe_size=16, use_gpu="no"))
    streamed = dataclasses.replace(data, root=str(work / "pack"), max_decoded_gb=0.0)
    runs = [("folder", 0, 0, study)] + [
        ("pack", b, c, dataclasses.replace(study, data=dataclasses.replace(streamed, shuffle_buffer=b,
                                                                           shuffle_chunk=c)))
        for b in args.buffers for c in args.chunks]
    rows = []
    for source, buffer, chunk, cfg in runs:
        acc, seconds = accuracy(cfg, work / f"root-{source}-{buffer}-{chunk}")
        rows.append({"source": source, "buffer": buffer, "chunk": chunk, "shards": shards if source == "pack" else 0,
                     "epochs": args.epochs, "test_acc": acc, "train_s": seconds})
        print(rows[-1], file=sys.stderr, flush=True)
    harness.write_result(pd.DataFrame(rows), "shuffle", args.out, title="Tiny-ImageNet-10 source training: folder "
                         "(full permutation) vs streaming pack (shards + shuffle buffer)")


if __name__ == "__main__":
    main()
