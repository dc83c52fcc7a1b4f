"""Files into a tracking server, through its proxied artifact service: a run's artifacts,
and a logged model's (under the model's own artifact URI).

Small files are sent whole; larger ones stream from a rewindable body (urllib3 rewinds it
on a retry), in parts straight to presigned URLs where the server's destination supports
MLflow's multipart upload. With artifacts_direct (--artifacts-direct) files go straight to
the S3 bucket the artifact URI names (s3://..., or mlflow-artifacts:/ under the server's
destination given as ?artifacts_destination=), never through the server. An MLmodel file
names its run and logged model, so it is rewritten for the new ids (provenance.rewrite_mlmodel).
"""
from __future__ import annotations

import math
import os
import posixpath
import shutil
import tempfile
from typing import BinaryIO, Callable, Protocol
from urllib.parse import quote, urlsplit

from trackport._files import CHUNK_SIZE, check_relpath
from trackport.domain import Run
from trackport.errors import BadInputError, TransientError, UnitError
from trackport.s3 import S3Url
from trackport.provenance import is_mlmodel, rewrite_mlmodel
from trackport.stores.base import UnitContent
from trackport.stores.rest.http import ARTIFACTS_API, RestClient, RestError
from trackport.stores.s3_artifacts import S3Artifacts, s3_root

MULTIPART_MIN_SIZE = 500 * 1024 * 1024  # MLflow client's MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE
MULTIPART_CHUNK = 10 * 1024 * 1024  # MLflow client's MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE
SMALL_FILE = 1024 * 1024  # read whole and sent as bytes (also avoids chunked empty bodies)


class Counted(Protocol):
    """A write result that counts the files sent (RunWriteResult, UnitWriteResult)."""

    artifact_files: int
    artifact_bytes: int


class ArtifactUploader:
    def __init__(
        self,
        client: RestClient,
        *,
        multipart_uploads: bool,
        direct: S3Artifacts | None = None,
        destination: S3Url | None = None,
    ) -> None:
        self.client = client
        self.multipart_uploads = multipart_uploads  # the server said it takes them
        self.direct = direct  # --artifacts-direct: files go to S3 with our own credentials
        self.destination = destination  # the server's --artifacts-destination, when given

    def upload(self, run: Run, target_id: str, artifact_uri: str, content: UnitContent, result: Counted) -> None:
        """Every artifact of the source run into the target run (whose artifact URI the
        server gave), counted into result."""
        self.upload_files(f"run {run.run_id}", artifact_uri, content, result, lambda data: rewrite_mlmodel(data, {run.run_id: target_id}))

    def upload_files(
        self, owner: str, artifact_uri: str, content: UnitContent, result: Counted, rewrite: Callable[[bytes], bytes]
    ) -> None:
        """Every file content lists, under artifact_uri (a run's or a logged model's, as the
        server gave it), counted into result; an MLmodel file through rewrite. owner names
        whose files they are in messages ("run 3f2a...")."""
        root: str | None = None
        bucket: S3Url | None = None
        for artifact in content.artifact_files():
            if root is None and bucket is None:
                if self.direct is not None:
                    bucket = self._direct_root(artifact_uri)
                else:
                    root = _artifact_root(artifact_uri)
            try:
                path = check_relpath(artifact.path)
            except ValueError as exc:
                raise UnitError(f"{owner}: artifact path refused: {exc}") from None
            if bucket is not None:
                self._put_direct(bucket, path, content, result, rewrite)
            else:
                self._upload_one(root, path, artifact.size, content, result, rewrite)

    def _direct_root(self, artifact_uri: str) -> S3Url:
        found = s3_root(artifact_uri, self.destination)
        if found is None:
            if artifact_uri.startswith("mlflow-artifacts:"):
                raise BadInputError(
                    "--artifacts-direct: the target serves its artifacts (mlflow-artifacts:/...) and trackport does not"
                    " know where it keeps them; add ?artifacts_destination=s3://bucket/prefix (its"
                    " --artifacts-destination) to the target's URL"
                )
            raise BadInputError(
                f"--artifacts-direct: the target stores artifacts at {urlsplit(artifact_uri).scheme or artifact_uri!r},"
                " not in S3; leave out --artifacts-direct"
            )
        return found

    def _put_direct(
        self, bucket: S3Url, path: str, content: UnitContent, result: Counted, rewrite: Callable[[bytes], bytes]
    ) -> None:
        """One file straight into S3 (a failure there is fatal: there is no fallback the
        user did not ask for)."""
        assert self.direct is not None
        with content.open_artifact(path) as stream:
            if is_mlmodel(path):
                data = stream.read()
                result.artifact_bytes += len(data)
                self.direct.put(bucket, path, rewrite(data))
            else:
                counted = _Counting(stream)
                self.direct.put(bucket, path, counted)  # type: ignore[arg-type]
                result.artifact_bytes += counted.count
        result.artifact_files += 1

    def _upload_one(
        self, root: str, path: str, size: int, content: UnitContent, result: Counted, rewrite: Callable[[bytes], bytes]
    ) -> None:
        rel = _quote_path(path)
        url = f"{ARTIFACTS_API}/artifacts/{root}/{rel}"
        headers = {"Content-Type": "application/octet-stream"}
        with content.open_artifact(path) as stream:
            if is_mlmodel(path):
                data = stream.read()
                result.artifact_bytes += len(data)
                self.client.request("PUT", url, data=rewrite(data), headers=headers)
            elif size < SMALL_FILE:
                data = stream.read()
                result.artifact_bytes += len(data)
                self.client.request("PUT", url, data=data, headers=headers)
            else:
                with _rewindable(stream) as body:
                    length = _remaining(body)
                    sent = (
                        self.multipart_uploads
                        and length >= MULTIPART_MIN_SIZE
                        and self._multipart_upload(root, path, body, length)
                    )
                    if not sent:
                        headers["Content-Length"] = str(length)
                        self.client.request("PUT", url, data=body, headers=headers)
                    result.artifact_bytes += length
        result.artifact_files += 1

    def _multipart_upload(self, root: str, path: str, body: BinaryIO, length: int) -> bool:
        """MLflow's proxied multipart upload (S3-like destinations): parts go straight to
        presigned URLs, without our credentials. False when the artifact destination does
        not support it (a plain PUT is then used)."""
        directory, filename = posixpath.split(path)
        endpoint_dir = root + ("/" + _quote_path(directory) if directory else "")
        num_parts = max(1, math.ceil(length / MULTIPART_CHUNK))
        start = body.tell()
        try:
            created = self.client.call(
                "POST",
                f"{ARTIFACTS_API}/mpu/create/{endpoint_dir}",
                body={"path": filename, "num_parts": num_parts},
                idempotent=False,
            )
        except (RestError, TransientError) as exc:
            if "NOT_IMPLEMENTED" in str(exc) or "HTTP 501" in str(exc):
                return False
            raise
        upload_id = created["upload_id"]
        try:
            parts = []
            for credential in sorted(created.get("credentials", []), key=lambda c: int(c["part_number"])):
                number = int(credential["part_number"])
                body.seek(start + (number - 1) * MULTIPART_CHUNK)
                chunk = body.read(MULTIPART_CHUNK)
                response = self.client.request(
                    "PUT", credential["url"], data=chunk, headers=credential.get("headers") or {}, authenticated=False
                )
                parts.append({"part_number": number, "etag": response.headers.get("ETag", ""), "url": credential["url"]})
            self.client.call(
                "POST",
                f"{ARTIFACTS_API}/mpu/complete/{endpoint_dir}",
                body={"path": filename, "upload_id": upload_id, "parts": parts},
            )
            return True
        except BaseException:
            try:
                self.client.call(
                    "POST",
                    f"{ARTIFACTS_API}/mpu/abort/{endpoint_dir}",
                    body={"path": filename, "upload_id": upload_id},
                )
            except Exception:  # noqa: BLE001 - best effort
                pass
            raise


def _artifact_root(artifact_uri: str) -> str:
    """The proxied path P of a run or logged model whose artifact URI is mlflow-artifacts:/P."""
    parts = urlsplit(artifact_uri)
    if parts.scheme != "mlflow-artifacts":
        scheme = parts.scheme or artifact_uri or "an unknown location"
        hint = " or give --artifacts-direct to write into the bucket" if scheme == "s3" else ""
        raise UnitError(
            f"target stores artifacts at {scheme} which trackport cannot upload to through the server "
            f"(start the server with --serve-artifacts / --artifacts-destination{hint})"
        )
    return _quote_path(parts.path.strip("/"))


def _quote_path(path: str) -> str:
    return "/".join(quote(segment, safe="") for segment in path.split("/"))


def _remaining(stream: BinaryIO) -> int:
    position = stream.tell()
    end = stream.seek(0, os.SEEK_END)
    stream.seek(position)
    return end - position


class _rewindable:
    """The stream itself when it can seek (urllib3 rewinds it on a retry), else a spooled
    temporary copy of it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._spool: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        try:
            if self._stream.seekable():
                self._stream.tell()
                return self._stream
        except (AttributeError, OSError, ValueError):
            pass
        self._spool = tempfile.TemporaryFile(prefix="trackport-upload-")
        shutil.copyfileobj(self._stream, self._spool, CHUNK_SIZE)
        self._spool.seek(0)
        return self._spool

    def __exit__(self, *exc: object) -> None:
        if self._spool is not None:
            self._spool.close()


class _Counting:
    """A stream that counts the bytes read from it (what went to S3)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data
