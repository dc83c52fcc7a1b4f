"""Talking to S3 and S3-compatible stores (MinIO, Ceph, moto): URLs, clients, errors.

Credentials come from boto3's standard chain (environment, `AWS_PROFILE` and the shared
files, instance roles); the endpoint from `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` or
MLflow's `MLFLOW_S3_ENDPOINT_URL`, in that order. Credentials are never part of a message:
errors name the bucket and key, and the service's error code.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from trackport.errors import AuthError, BadInputError, StorageError, TrackportError, UnreachableError

# Error codes that mean "these credentials may not do this" (exit 5).
_AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "403",
})
_NO_BUCKET = frozenset({"NoSuchBucket", "404"})
MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 64 << 20


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # without a leading or trailing slash; "" for the bucket's root

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def is_s3_url(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_s3_url(uri: str) -> S3Url:
    """s3://bucket/prefix -> S3Url; BadInputError for anything else."""
    if not is_s3_url(uri):
        raise BadInputError(f"{uri}: not an s3:// URL (s3://bucket/prefix)")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise BadInputError(f"{uri}: no bucket; give s3://bucket/prefix")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise BadInputError(f"{uri}: the prefix has an empty, '.' or '..' part; give s3://bucket/some/prefix")
    return S3Url(bucket, prefix)


def endpoint_url() -> str | None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        value = os.environ.get(name)
        if value:
            return value
    return None


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def client(max_connections: int = 16) -> Any:
    """A boto3 S3 client for the environment's credentials and endpoint, shared per
    (profile, endpoint) by every thread (boto3 clients are thread-safe)."""
    import boto3
    from botocore.config import Config

    profile = os.environ.get("AWS_PROFILE") or None
    # Keyed by the credentials named in the environment too: changed keys get a new client.
    key = (profile, endpoint_url(), max_connections, os.environ.get("AWS_ACCESS_KEY_ID"))
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            try:
                session = boto3.session.Session(profile_name=profile)
            except Exception as exc:  # noqa: BLE001 - botocore's ProfileNotFound and kin
                raise AuthError(f"AWS profile {profile!r}: {exc}; check AWS_PROFILE and ~/.aws/config") from None
            found = session.client(
                "s3",
                endpoint_url=key[1],
                config=Config(retries={"max_attempts": 7, "mode": "standard"}, max_pool_connections=max_connections),
            )
            _clients[key] = found
        return found


def transfer_config(concurrency: int = 8) -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK, max_concurrency=concurrency
    )


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


def s3_error(exc: BaseException, what: str) -> TrackportError:
    """One line for an error of boto3/botocore met while doing `what` (e.g. "writing
    s3://b/p/x"): credentials or permission refused (exit 5), no such bucket (exit 3),
    endpoint unreachable (exit 6), anything else a storage error (exit 8)."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AuthError(f"{what}: no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, EndpointConnectionError):
        return UnreachableError(f"{what}: the S3 endpoint did not answer; check AWS_ENDPOINT_URL and the network")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _AUTH_CODES:
            return AuthError(f"{what}: refused by S3 ({code}); check the credentials and the bucket's permissions")
        if code in _NO_BUCKET:
            return BadInputError(f"{what}: no such bucket ({code}); check the bucket name or create it")
        return StorageError(f"{what}: S3 answered {code or exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


def is_missing(exc: BaseException) -> bool:
    """A 404 on an object (not on the bucket)."""
    return error_code(exc) in ("404", "NoSuchKey", "NotFound")
