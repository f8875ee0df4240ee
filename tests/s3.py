"""A real S3 API on loopback for the cloud-root tests: moto's server in a subprocess.

pyarrow (and so StudyRoot, pandas and Ray Tune's ``storage_path``) reaches it through the
standard AWS environment: ``AWS_ENDPOINT_URL`` plus test credentials, exactly how a user
points a study at MinIO or any S3-compatible store. Nothing goes into a URI or a config.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import moto

# Distinctive values, so a test can prove that no file or log line of a study carries them.
KEY_ID = "CORESETTESTKEYID0042"
SECRET = "coreset-test-secret-5f0c9a7e-never-log-me"
# moto 5.2.0-5.2.1 answer CompleteMultipartUpload with a wrong XML root tag, which pyarrow's
# S3 client rejects (getmoto/moto#10055, fixed in 5.2.2): every object over ~5 MB fails.
MIN_MOTO = (5, 2, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoS3:
    endpoint: str
    proc: subprocess.Popen

    def env(self) -> dict[str, str]:
        """The environment a process needs to use this server as its S3."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY_ID,
                            aws_secret_access_key=SECRET, region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"coreset-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object in ``bucket``: key -> bytes."""
        s3, out = self.client(), {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out


def moto_version_problem() -> str | None:
    version = tuple(int(p) for p in moto.__version__.split(".")[:3] if p.isdigit())
    if version < MIN_MOTO:
        return (f"moto {moto.__version__} breaks pyarrow's multipart uploads (getmoto/moto#10055); "
                f"pip install 'moto[server]>={'.'.join(map(str, MIN_MOTO))}'")
    return None


def start_moto(log: Path, timeout_s: float = 30) -> MotoS3:
    """Start ``python -m moto.server`` on a free loopback port and wait until it answers."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    server = MotoS3(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            server.client().list_buckets()
            return server
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_moto(server)
                raise RuntimeError(f"moto server did not start; see {log}") from None
            time.sleep(0.2)


def stop_moto(server: MotoS3) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
