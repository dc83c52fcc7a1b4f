"""Artifact files read from and written to S3 directly with boto3, beside a tracking server.

A run whose artifact URI is `s3://bucket/prefix/...` (a server started with
--no-serve-artifacts --default-artifact-root s3://...), or `mlflow-artifacts:/P` of a server
whose --artifacts-destination the user named (`?artifacts_destination=s3://bucket/prefix` on
the server's URL), keeps its files at an S3 root: listing and reading them there skips the
server's artifact proxy, which every byte otherwise crosses. Credentials and the endpoint are
trackport.s3's (boto3's standard chain). See docs/s3-artifacts.md.
"""
from __future__ import annotations

import threading
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from trackport import s3
from trackport.domain import ArtifactFile
from trackport.errors import AuthError, BadInputError, TransientError, UnitError, UnreachableError
from trackport.s3 import S3Url

# Errors of the direct path after which the proxy is used instead (when there is one): the
# credentials, the bucket or the endpoint, not the one file.
FALLBACK_ERRORS = (AuthError, BadInputError, UnreachableError)
UPLOAD_CONCURRENCY = 4  # parts of one file in flight (64 MiB each) when uploading directly


def s3_root(artifact_uri: str | None, destination: S3Url | None) -> S3Url | None:
    """The S3 root of an artifact URI: s3://... itself, or mlflow-artifacts:/P under the
    server's destination when it is known; None when the files are not (known to be) in S3."""
    uri = artifact_uri or ""
    if s3.is_s3_url(uri):
        try:
            return s3.parse_s3_url(uri)
        except BadInputError:
            return None
    if destination is not None and uri.startswith("mlflow-artifacts:"):
        path = unquote(urlsplit(uri).path).strip("/")
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            return None
        return S3Url(destination.bucket, destination.key(path))
    return None


def parse_destination(value: str | None) -> S3Url | None:
    """The ?artifacts_destination= of a server URL, which must be s3://bucket/prefix."""
    if value is None:
        return None
    if not s3.is_s3_url(value):
        raise BadInputError(
            f"artifacts_destination={value}: a tracking server's destination is read directly only"
            " from S3 (s3://bucket/prefix); leave the option out to go through the server"
        )
    return s3.parse_s3_url(value)


class _Body:
    """An S3 object's body as a read-only binary stream; a broken download is transient."""

    def __init__(self, body, where: str) -> None:
        self._body = body
        self._where = where

    def read(self, size: int = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except Exception as exc:  # noqa: BLE001 - botocore/urllib3/socket errors alike
            raise TransientError(f"download of {self._where} broke off: {type(exc).__name__}") from None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> "_Body":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3Artifacts:
    """Lists, opens and writes artifact files under S3 roots, and remembers the buckets the
    direct path failed on (so that a fallback asks S3 once, not once per file)."""

    def __init__(self, max_connections: int = 16) -> None:
        self._max_connections = max_connections
        self._broken: dict[str, str] = {}  # bucket -> why the direct path does not work there
        self._lock = threading.Lock()

    def _client(self):
        return s3.client(self._max_connections)

    def broken(self, root: S3Url) -> str | None:
        """Why direct access to root's bucket failed before (None: not known to fail)."""
        with self._lock:
            return self._broken.get(root.bucket)

    def mark_broken(self, root: S3Url, error: Exception) -> str:
        with self._lock:
            return self._broken.setdefault(root.bucket, str(error))

    def list(self, root: S3Url) -> list[ArtifactFile]:
        """Every file under root, sorted by path relative to it (folder markers left out)."""
        prefix = root.prefix + "/" if root.prefix else ""
        files = []
        try:
            paginator = self._client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=root.bucket, Prefix=prefix):
                for item in page.get("Contents") or ():
                    rel = item["Key"][len(prefix):]
                    if rel and not rel.endswith("/"):
                        files.append(ArtifactFile(path=rel, size=int(item.get("Size", 0))))
        except Exception as exc:  # noqa: BLE001 - botocore's errors, mapped to one line
            raise s3.s3_error(exc, f"listing {root}") from None
        files.sort(key=lambda f: f.path)
        return files

    def check(self, root: S3Url) -> None:
        """One cheap listing under root: the credentials, the bucket and the endpoint work."""
        try:
            self._client().list_objects_v2(Bucket=root.bucket, Prefix=root.prefix + "/" if root.prefix else "", MaxKeys=1)
        except Exception as exc:  # noqa: BLE001
            raise s3.s3_error(exc, f"listing {root}") from None

    def open(self, root: S3Url, rel: str) -> BinaryIO:
        where = f"s3://{root.bucket}/{root.key(rel)}"
        try:
            answer = self._client().get_object(Bucket=root.bucket, Key=root.key(rel))
        except Exception as exc:  # noqa: BLE001
            if s3.is_missing(exc) and s3.error_code(exc) != "NoSuchBucket":
                raise UnitError(f"{where}: no such file in S3 (listed, then gone?)") from None
            raise s3.s3_error(exc, f"reading {where}") from None
        return _Body(answer["Body"], where)  # type: ignore[return-value]

    def put(self, root: S3Url, rel: str, data: bytes | BinaryIO) -> None:
        """One file, whole (bytes) or streamed in parts (a binary stream)."""
        where = f"s3://{root.bucket}/{root.key(rel)}"
        try:
            if isinstance(data, bytes):
                self._client().put_object(Bucket=root.bucket, Key=root.key(rel), Body=data)
            else:
                self._client().upload_fileobj(
                    data, root.bucket, root.key(rel), Config=s3.transfer_config(UPLOAD_CONCURRENCY)
                )
        except Exception as exc:  # noqa: BLE001
            raise s3.s3_error(exc, f"writing {where}") from None


def fallback_note(root: S3Url, reason: str) -> str:
    return f"artifacts read through the server's proxy: reading {root} directly failed ({reason})"

