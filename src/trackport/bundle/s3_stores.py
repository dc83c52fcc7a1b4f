"""A bundle at s3://bucket/prefix as a sink (export) and a source (import, verify,
inspect): BundleSink on a staging copy whose runs are sent as they are written, and
BundleSource reading the bucket through bundle.location.S3Files (bundle/s3_bundle.py);
both described by the S3 URL, so that ledgers, id maps and messages name the bucket."""
from __future__ import annotations

from trackport.errors import BadInputError
from trackport.stores.base import StoreDescription
from trackport.bundle.index import Problem
from trackport.bundle.layout import MANIFEST_FILE
from trackport.bundle.location import S3Files
from trackport.bundle.reader import BundleSource
from trackport.bundle.s3_bundle import S3Bundle
from trackport.bundle.writer import BundleSink


class S3BundleSink(BundleSink):
    """Writes the staging copy, sending each run as it is written and the rest in
    finish(); `sent` counts what finish() sent ({"sent", "kept", "bytes"})."""

    def __init__(self, uri: str, *, row_group_rows: int) -> None:
        remote = S3Bundle(uri, "export")
        remote.check_bucket()
        remote.check_writable()
        if remote.foreign_objects():
            raise BadInputError(
                f"{remote.uri} holds objects that are not a trackport bundle; export to a new or empty prefix"
            )
        if remote.holds_bundle() and not remote.uploaded_here():
            remote.download()  # a bundle written elsewhere (or replaced): extend what the bucket holds
        remote.home.mkdir(parents=True, exist_ok=True)
        self.remote = remote
        self.sent: dict[str, int] = {}
        super().__init__(remote.staging, row_group_rows=row_group_rows)

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="bundle", uri=self.remote.uri)

    def published(self, run_dir) -> None:
        self.remote.send_run(run_dir)  # on the worker's thread: runs go while others are written

    def finish(self, counts: dict) -> None:
        super().finish(counts)
        self.sent = self.remote.upload()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.remote.close()


class S3BundleSource(BundleSource):
    """The bundle read from the bucket: its root descriptor and manifest downloaded (when
    changed), every other file read from the bucket as it is needed."""

    def __init__(self, uri: str, *, checked_runs: int) -> None:
        self.remote = S3Bundle(uri, "read")
        try:
            meta = self.remote.fetch_meta()
            if not (meta / MANIFEST_FILE).is_file():
                raise BadInputError(
                    f"{self.remote.uri} is incomplete (no {MANIFEST_FILE}): the export did not finish; re-run the export"
                )
            super().__init__(meta, checked_runs=checked_runs, files=S3Files(self.remote))
        finally:
            self.remote.close()

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="bundle", uri=self.remote.uri, mlflow_version=super().describe().mlflow_version)

    def _message(self, problem: Problem) -> str:
        return f"{self.remote.uri}/{problem.path}: {problem.message}"


def verify_s3_bundle(uri: str, level: str):
    """bundle verify of the bundle at uri: its listed objects read from the bucket."""
    from trackport.bundle.verify import verify_bundle

    remote = S3Bundle(uri, "read")
    try:
        return verify_bundle(remote.fetch_meta(), level, files=S3Files(remote))
    finally:
        remote.close()


def inspect_s3_bundle(uri: str) -> dict:
    from trackport.bundle.inspect import inspect_bundle

    return inspect_bundle(S3BundleSource(uri, checked_runs=64))
