"""Pack a dataset into WebDataset tar shards with an index and a manifest, for streaming.

    python jobs/pack.py --config jobs/configs/imagenet.yaml --out s3://bucket/datasets/imagenet-pack
    python jobs/pack.py --config C --out /data/pack --shard-mb 256 --short-side 256 --quality 90
    python jobs/pack.py --root results/mnist --subset gradsimcore 0.1 0 --out s3://bucket/coresets/mnist-gsc-10

Reads ``data`` of the config as every stage does (``data.corrupt`` applies), writes
``<split>-NNNNNN.tar`` shards (shard k: one contiguous range of sample ids), ``<split>-index.parquet``
(``sample_id, label, path, shard, offset, size``) and ``manifest.json`` (written last). A rerun
writes only the missing shards. Point a study at the pack with ``--set data.root=<out>``.

With ``--root STUDY --subset METHOD FRACTION SEED`` (and no ``--config``: the study's recorded
config says what data it reads) it packs the study's recorded coreset instead, its original
bytes: train = the subset renumbered 0..k-1, test = the study's, the origin in the manifest's
``subset`` entry and ``subset.csv`` beside it (``coreset/stages/export.py``).
"""
from __future__ import annotations

from coreset.cluster.pack import pack_main

if __name__ == "__main__":
    pack_main(__doc__)
