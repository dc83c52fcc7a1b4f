"""A bundle at s3://bucket/prefix as a sink (export) and a source (import, verify,
inspect): the local BundleSink and BundleSource on the staging copy (bundle/s3_bundle.py),
described by the S3 URL so that ledgers, id maps and messages name the bucket."""
from __future__ import annotations

from trackport.errors import BadInputError
from trackport.stores.base import StoreDescription
from trackport.bundle.index import Problem
from trackport.bundle.reader import BundleSource
from trackport.bundle.s3_bundle import S3Bundle
from trackport.bundle.writer import BundleSink


class S3BundleSink(BundleSink):
    """Writes the staging copy, then sends it to the bucket in finish(); `sent` counts
    what went ({"sent", "kept", "bytes"})."""

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

    def finish(self, counts: dict) -> None:
        super().finish(counts)
        self.sent = self.remote.upload()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.remote.close()


class S3BundleSource(BundleSource):
    """The bundle read from the bucket (downloaded into the staging copy first, but for
    the files held already); `fetched` counts what came ({"fetched", "kept", "bytes"})."""

    def __init__(self, uri: str, *, checked_runs: int) -> None:
        remote = fetch(uri)
        self.remote = remote
        self.fetched = remote.last_download
        super().__init__(remote.staging, checked_runs=checked_runs)

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="bundle", uri=self.remote.uri, mlflow_version=super().describe().mlflow_version)

    def _message(self, problem: Problem) -> str:
        return f"{self.remote.uri}/{problem.path}: {problem.message}"


def fetch(uri: str) -> S3Bundle:
    """The bundle at uri downloaded into its read staging copy (verify and inspect read it there)."""
    remote = S3Bundle(uri, "read")
    remote.last_download = remote.download()
    return remote
