"""Parquet table contracts: schemas with a version in their metadata, atomic writes.

A reader that finds another schema version fails with one line instead of silently
misreading columns; writers validate columns before anything is published.
"""
from __future__ import annotations

import io
from collections.abc import Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from coreset.errors import SchemaError, StorageError
from coreset.storage import StudyRoot

SCHEMA_VERSION = "1"
_META_VERSION = b"coreset.schema_version"
_META_KIND = b"coreset.table"

# Required columns (and their arrow types) of every table kind; tables may add columns.
SCHEMAS: Mapping[str, Mapping[str, pa.DataType]] = {
    "split": {"sample_id": pa.int64(), "label": pa.int64(), "split": pa.string()},
    # split: 'train' or 'test'; path: relative to the split folder; error: why PIL could not decode it.
    "skipped_files": {"split": pa.string(), "path": pa.string(), "error": pa.string()},
    "train_log": {
        "epoch": pa.int64(), "lr": pa.float64(), "train_loss": pa.float64(), "train_acc": pa.float64(),
        "val_acc": pa.float64(), "test_acc": pa.float64(), "wall_s": pa.float64(),
    },
    # correct: the argmax of the training forward pass (augmented, train mode) equals the label.
    "correctness": {"sample_id": pa.int64(), "label": pa.int64(), "epoch": pa.int64(), "correct": pa.bool_()},
    "trajectory": {"sample_id": pa.int64(), "label": pa.int64(), "epoch": pa.int64(), "l2_last": pa.float64()},
    "gradients": {"sample_id": pa.int64(), "label": pa.int64(), "epoch": pa.int64(), "loss": pa.float32(),
                  "correct": pa.bool_()},
    # DeepFool at the trained model: perturbation = (1 + overshoot)·‖r‖₂ in the model's (normalised) input
    # space; flipped: the prediction changed within max_iter steps.
    "perturbation": {"sample_id": pa.int64(), "label": pa.int64(), "epoch": pa.int64(), "perturbation": pa.float64(),
                     "iterations": pa.int64(), "flipped": pa.bool_()},
    "scores": {"sample_id": pa.int64(), "label": pa.int64(), "method": pa.string(), "score": pa.float64()},
    "subsets": {"method": pa.string(), "fraction": pa.float64(), "seed": pa.int64(), "sample_id": pa.int64()},
    # From the prefix of length position + 1 of its class's CRAIG order on, sample_id's nearest chosen image is medoid.
    "craig_assignments": {"label": pa.int64(), "sample_id": pa.int64(), "position": pa.int64(), "medoid": pa.int64()},
    "gradsim_thresholds": {"epoch": pa.int64(), "label": pa.int64(), "threshold": pa.float64(), "n": pa.int64()},
    # Per subset and class: its images; over the compared ones (all, or a sample of MAX_COMPARED) the mean pairwise
    # last-layer gradient cosine (NaN below 2) and how many have another at cosine >= the near-duplicate threshold.
    "subset_diagnostics": {"method": pa.string(), "fraction": pa.float64(), "seed": pa.int64(), "label": pa.int64(),
                           "images": pa.int64(), "compared": pa.int64(), "mean_cosine": pa.float64(),
                           "near_duplicates": pa.int64()},
    "label_entropy": {"method": pa.string(), "k": pa.int64(), "fraction": pa.float64(), "entropy": pa.float64(),
                      "baseline_entropy": pa.float64()},
    "accuracy": {"method": pa.string(), "fraction": pa.float64(), "seed": pa.int64(), "source_model": pa.string(),
                 "target_model": pa.string(), "n_train": pa.int64(), "test_acc": pa.float64(),
                 "best_test_acc": pa.float64(), "epochs": pa.float64(), "wall_s": pa.float64(), "config": pa.string()},
    "batch_bound": {"batch": pa.int64(), "epoch": pa.int64(), "batch_size": pa.int64(), "column": pa.string(),
                    "norm_of_sum": pa.float64(), "sum_of_norms": pa.float64()},
}


def to_arrow(df: pd.DataFrame | pa.Table, kind: str) -> pa.Table:
    """Validate ``df`` against ``kind``'s schema and stamp the version into its metadata."""
    if kind not in SCHEMAS:
        raise SchemaError(f"unknown table kind {kind!r}; allowed: {', '.join(SCHEMAS)}")
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    fields = []
    for name, typ in SCHEMAS[kind].items():
        if name not in table.column_names:
            raise SchemaError(f"{kind} table lacks column {name!r}; has: {', '.join(table.column_names)}")
        fields.append((name, typ))
    for name, typ in fields:
        col = table.column(name)
        if col.type != typ:
            table = table.set_column(table.column_names.index(name), name, col.cast(typ))
    meta = dict(table.schema.metadata or {})
    meta.update({_META_VERSION: SCHEMA_VERSION.encode(), _META_KIND: kind.encode()})
    return table.replace_schema_metadata(meta)


def write_table(root: StudyRoot, rel: str, df: pd.DataFrame | pa.Table, kind: str) -> None:
    """Write one Parquet file atomically (readers never see a partial table)."""
    table = to_arrow(df, kind)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    root.write_bytes(rel, buf.getvalue())


def read_table(root: StudyRoot, rel: str, kind: str) -> pd.DataFrame:
    """Read a table written by :func:`write_table`, checking its kind and schema version."""
    if not root.exists(rel):
        raise StorageError(f"{root.url(rel)} does not exist")
    table = pq.read_table(root.path(rel), filesystem=root.fs)
    check_version(table.schema, kind, root.url(rel))
    return table.to_pandas()


def check_version(schema: pa.Schema, kind: str, where: str) -> None:
    meta = schema.metadata or {}
    version = meta.get(_META_VERSION, b"?").decode()
    found_kind = meta.get(_META_KIND, b"?").decode()
    if version != SCHEMA_VERSION or found_kind != kind:
        raise SchemaError(f"{where} is a {found_kind!r} table of schema version {version}; "
                          f"this coreset reads {kind!r} tables of version {SCHEMA_VERSION}")
