"""Study roots on a real S3 API (moto's server on loopback): bytes, tables, checkpoints."""
from __future__ import annotations

import pandas as pd
import pytest
from s3 import SECRET

from coreset.checkpoints import load_checkpoint, model_meta, save_checkpoint
from coreset.models import InputSpec, build_model
from coreset.storage import StorageError, StudyRoot
from coreset.tables import read_table, write_table


def test_study_root_round_trip_on_s3(s3_bucket: str, s3_env) -> None:
    root = StudyRoot(f"s3://{s3_bucket}/studies/rt/")
    assert root.uri == f"s3://{s3_bucket}/studies/rt" and not root.local
    assert not root.exists("a/b.bin") and root.list("a") == []

    root.write_bytes("a/b.bin", b"payload")
    root.write_bytes("a/c.bin", b"x" * (12 << 20))  # over the multipart threshold
    assert root.exists("a/b.bin") and root.read_bytes("a/b.bin") == b"payload"
    assert root.list("a") == ["b.bin", "c.bin"] and len(root.read_bytes("a/c.bin")) == 12 << 20
    root.write_bytes("a/b.bin", b"new")
    assert root.read_bytes("a/b.bin") == b"new"

    df = pd.DataFrame({"sample_id": [0, 1, 2], "label": [3, 4, 5], "split": ["train", "val", "train"]})
    write_table(root, "split.parquet", df, "split")
    assert read_table(root, "split.parquet", "split").label.tolist() == [3, 4, 5]
    # Readable by plain pandas with nothing but the environment.
    assert pd.read_parquet(root.url("split.parquet")).split.tolist() == ["train", "val", "train"]

    model = build_model("mnist_cnn", InputSpec(1, 28, 10))
    meta = model_meta("mnist_cnn", "mnist", 10, 28)
    save_checkpoint(root, "source/checkpoints/epoch=0001.pt", {"model": model.state_dict(), "epoch": 1, "meta": meta})
    state = load_checkpoint(StudyRoot(root.uri), "source/checkpoints/epoch=0001.pt", meta)
    assert state["epoch"] == 1 and state["model"].keys() == model.state_dict().keys()

    keys = set(s3_env.objects(s3_bucket))
    assert {"studies/rt/a/b.bin", "studies/rt/split.parquet", "studies/rt/source/checkpoints/epoch=0001.pt"} <= keys
    assert not [k for k in keys if ".tmp-" in k]

    root.delete("a/b.bin")
    assert not root.exists("a/b.bin") and root.list("a") == ["c.bin"]
    root.delete("a")
    assert not root.exists("a") and root.list("") == ["source", "split.parquet"]
    with pytest.raises(StorageError, match="does not exist"):
        root.read_bytes("a/b.bin")


def test_root_options_in_the_query_follow_every_joined_path(s3_bucket: str, s3_env, monkeypatch) -> None:
    """The endpoint may also come as pyarrow URI options; paths join before the query."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    host = s3_env.endpoint.removeprefix("http://")
    query = f"endpoint_override={host}&scheme=http&region=us-east-1"
    root = StudyRoot(f"s3://{s3_bucket}/q/?{query}")
    assert root.uri == f"s3://{s3_bucket}/q?{query}"
    assert root.url("scores/random.parquet") == f"s3://{s3_bucket}/q/scores/random.parquet?{query}"
    assert root.path("scores/random.parquet") == f"{s3_bucket}/q/scores/random.parquet"
    write_table(root, "scores/random.parquet",
                pd.DataFrame({"sample_id": [7], "label": [1], "method": ["random"], "score": [0.5]}), "scores")
    assert pd.read_parquet(root.url("scores/random.parquet")).sample_id.tolist() == [7]
    assert pd.read_parquet(root.url("scores")).method.tolist() == ["random"]
    assert StudyRoot(root.uri).list("scores") == ["random.parquet"]  # what a Ray worker re-opens


def test_credentials_in_the_root_uri_are_refused() -> None:
    with pytest.raises(StorageError, match="carries credentials") as e:
        StudyRoot(f"s3://AKIAEXAMPLE:{SECRET}@bucket/studies/x")
    assert SECRET not in str(e.value) and "AKIAEXAMPLE" not in str(e.value)
    with pytest.raises(StorageError, match=r"carries credentials \(secret_key\)") as e:
        StudyRoot(f"s3://bucket/studies/x?region=us-east-1&Secret_Key={SECRET}")
    assert SECRET not in str(e.value)
