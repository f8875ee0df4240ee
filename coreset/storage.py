"""The study root: a local path or a cloud URI (s3://, gs://) behind one pyarrow filesystem.

Every write is atomic for readers: local files are written under a temporary name in
the same directory and renamed; object stores publish an object only when its upload
completes. Nothing is ever unpickled from a root.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

from coreset.errors import StorageError

# pyarrow's S3 URI options that are credentials (they would be logged and sent to every worker).
_SECRET_OPTIONS = frozenset({"access_key", "secret_key", "session_token"})


class StudyRoot:
    """Relative paths (``"source/train_log.parquet"``) resolved against one root URI.

    Cloud credentials come from the environment or the instance role, never from the URI
    (it is logged and handed to every Ray worker): a URI with ``user:secret@`` is refused.
    Options pyarrow reads from the query string (``?region=...&endpoint_override=...``)
    are kept and re-attached after every joined path.
    """

    def __init__(self, uri: str) -> None:
        self.local = "://" not in uri
        if self.local:
            uri = str(Path(os.path.expanduser(uri)).resolve())
            self._query = ""
        else:
            parts = urlsplit(uri)
            if "@" in parts.netloc:
                raise StorageError(f"study root {parts.scheme}://...@{parts.netloc.rsplit('@', 1)[1]}{parts.path} "
                                   "carries credentials; give them through the environment or an instance role instead")
            uri, _, self._query = uri.partition("?")
            secret = sorted(_SECRET_OPTIONS & {k.lower() for k, _ in parse_qsl(self._query)})
            if secret:
                raise StorageError(f"study root {uri} carries credentials ({', '.join(secret)}); give them through "
                                   "the environment or an instance role instead")
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(self._with_query(uri) if not self.local
                                                          else Path(uri).as_uri())
        except (ValueError, OSError) as e:
            raise StorageError(f"cannot open study root {self._with_query(uri)}: {e}") from None
        self._base_uri = uri.rstrip("/")
        self.uri = self.url()

    def _with_query(self, location: str) -> str:
        return f"{location}?{self._query}" if self._query else location

    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` (for pyarrow calls)."""
        return f"{self.base.rstrip('/')}/{rel}" if rel else self.base

    def url(self, rel: str = "") -> str:
        """A URI of ``rel`` that pandas, pyarrow and Ray (``storage_path``) accept; the root's
        query options, if any, follow the joined path."""
        return self._with_query(f"{self._base_uri}/{rel}" if rel else self._base_uri)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def makedirs(self, rel: str) -> None:
        try:
            self.fs.create_dir(self.path(rel), recursive=True)
        except OSError as e:
            raise StorageError(f"cannot create {self.url(rel)}: {e}") from None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` so that readers see either the old file or the whole new one."""
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        self.makedirs(parent)
        target = self.path(rel)
        # A dot-prefixed temporary name: Parquet dataset readers skip it while it is written.
        name = target.rsplit("/", 1)[-1]
        tmp = target if not self.local else f"{target[: -len(name)]}.{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            if tmp != target:
                self.fs.move(tmp, target)
        except OSError as e:
            if tmp != target:
                try:
                    self.fs.delete_file(tmp)
                except OSError:
                    pass
            raise StorageError(f"cannot write {self.url(rel)}: {e}") from None

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"{self.url(rel)} does not exist") from None
        except OSError as e:
            raise StorageError(f"cannot read {self.url(rel)}: {e}") from None

    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the entries directly under ``rel``; empty if it does not exist."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
        return sorted(info.base_name for info in self.fs.get_file_info(sel) if not info.base_name.startswith("."))

    def remove_partial_writes(self, rel: str) -> int:
        """Delete the temporary files that writers killed mid-write (a lost node, SIGKILL) left
        under ``rel``; returns how many. Call it only when no writer of ``rel`` is running.
        Object stores never publish a partial upload, so there is nothing to do there."""
        if not self.local:
            return 0
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=True)
        partial = [i.path for i in self.fs.get_file_info(sel)
                   if i.type == pafs.FileType.File and i.base_name.startswith(".") and ".tmp-" in i.base_name]
        for path in partial:
            self.fs.delete_file(path)
        return len(partial)

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))
