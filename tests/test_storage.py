"""Study roots, table contracts and checkpoints: atomic, versioned, weights-only."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from coreset.checkpoints import CheckpointError, load_checkpoint, model_meta, save_checkpoint
from coreset.models import InputSpec, build_model
from coreset.storage import StorageError, StudyRoot
from coreset.tables import SchemaError, read_table, write_table


def test_table_round_trip_is_readable_with_pandas(tmp_path: Path) -> None:
    root = StudyRoot(str(tmp_path / "study"))
    df = pd.DataFrame({"sample_id": [0, 1], "label": [3, 4], "split": ["train", "val"]})
    write_table(root, "split.parquet", df, "split")
    assert root.list("") == ["split.parquet"]  # no temporary file left behind
    back = pd.read_parquet(tmp_path / "study" / "split.parquet")
    assert back.sample_id.tolist() == [0, 1] and back.split.tolist() == ["train", "val"]
    assert read_table(root, "split.parquet", "split").label.tolist() == [3, 4]


def test_missing_column_and_other_version_are_refused(tmp_path: Path) -> None:
    root = StudyRoot(str(tmp_path))
    with pytest.raises(SchemaError, match="lacks column 'split'"):
        write_table(root, "split.parquet", pd.DataFrame({"sample_id": [0], "label": [1]}), "split")
    assert not root.exists("split.parquet")
    table = pa.table({"sample_id": [0], "label": [1], "split": ["train"]}).replace_schema_metadata(
        {b"coreset.schema_version": b"0", b"coreset.table": b"split"})
    pq.write_table(table, tmp_path / "split.parquet")
    with pytest.raises(SchemaError, match="schema version 0; this coreset reads 'split' tables of version 1"):
        read_table(root, "split.parquet", "split")


def test_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    root = StudyRoot(str(tmp_path))
    root.write_bytes("d/keep.bin", b"old")
    with pytest.raises(StorageError, match="cannot write"):
        root.write_bytes("d", b"new")  # the target is a non-empty directory: the final rename fails
    assert root.list("") == ["d"] and root.read_bytes("d/keep.bin") == b"old"


def test_partial_writes_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    root = StudyRoot(str(tmp_path))
    root.write_bytes("gradients/epoch_0001/shard_00000.parquet", b"whole")
    (tmp_path / "gradients/epoch_0001/.shard_00001.parquet.tmp-0123abcd").write_bytes(b"half")  # as a SIGKILL leaves it
    (tmp_path / "gradients/.hidden").write_bytes(b"not ours")
    assert root.remove_partial_writes("gradients") == 1
    assert (sorted(p.name for p in (tmp_path / "gradients").rglob("*") if p.is_file())
            == [".hidden", "shard_00000.parquet"])
    assert root.remove_partial_writes("gradients") == 0 and root.remove_partial_writes("absent") == 0


def test_unwritable_root_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    root = StudyRoot(str(tmp_path / "file" / "study"))
    with pytest.raises(StorageError, match="cannot"):
        root.write_bytes("t.bin", b"data")


def test_checkpoint_round_trip_weights_only(tmp_path: Path) -> None:
    root = StudyRoot(str(tmp_path))
    model = build_model("mnist_cnn", InputSpec(1, 28, 10))
    meta = model_meta("mnist_cnn", "mnist", 10, 28)
    save_checkpoint(root, "c.pt", {"model": model.state_dict(), "epoch": 3, "meta": meta})
    state = load_checkpoint(root, "c.pt", meta)
    other = build_model("mnist_cnn", InputSpec(1, 28, 10))
    other.load_state_dict(state["model"])
    assert state["epoch"] == 3
    assert all(torch.equal(a, b)
               for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=False))
    with pytest.raises(CheckpointError, match="written for model='mnist_cnn', expected 'cnn5'"):
        load_checkpoint(root, "c.pt", {**meta, "model": "cnn5"})


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    root = StudyRoot(str(tmp_path))
    torch.save({"meta": {}, "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(root, "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(root, "junk.pt")


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("unpickled!",))
