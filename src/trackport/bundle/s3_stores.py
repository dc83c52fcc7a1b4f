"""A bundle at s3://bucket/prefix as a sink (export, an increment of one) and a source
(import, verify, inspect): BundleSink and IncrementSink on a staging copy whose runs are
sent as they are written, and BundleSource reading the bucket through
bundle.location.S3Files (bundle/s3_bundle.py); all described by the S3 URL, so that
ledgers, id maps and messages name the bucket. The links of a chain on S3 lie side by side
under one prefix, as local ones lie in one directory."""
from __future__ import annotations

from pathlib import Path

from trackport import s3
from trackport.errors import BadInputError
from trackport.stores.base import StoreDescription
from trackport.bundle.chain import LinkError
from trackport.bundle.increment import IncrementSink
from trackport.bundle.index import Problem
from trackport.bundle.layout import MANIFEST_FILE
from trackport.bundle.location import S3Files
from trackport.bundle.reader import BundleSource
from trackport.bundle.s3_bundle import S3Bundle
from trackport.bundle.writer import BundleSink


def _open_remote(uri: str) -> S3Bundle:
    """The bucket side of an export into uri, checked before anything is written."""
    remote = S3Bundle(uri, "export")
    remote.check_bucket()
    remote.check_writable()
    root = remote.root_head()
    if root is None and remote.foreign_objects():
        raise BadInputError(f"{remote.uri} holds objects that are not a trackport bundle; export to a new or empty prefix")
    if root is not None and not remote.sent_root(root):
        remote.download()  # a bundle written elsewhere (or replaced): extend what the bucket holds
    remote.home.mkdir(parents=True, exist_ok=True)
    return remote


class _SendsToS3:
    """What a sink writing a staging copy does for the bucket (mixed into BundleSink and
    IncrementSink): each run sent as it is published, the rest in finish(); `sent` counts
    what finish() sent ({"sent", "kept", "bytes"})."""

    remote: S3Bundle
    sent: dict

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="bundle", uri=self.remote.uri)

    def published(self, run_dir) -> None:
        self.remote.send_run(run_dir)  # on the worker's thread: runs go while others are written

    def finish(self, counts: dict) -> None:
        super().finish(counts)  # type: ignore[misc]
        self.sent = self.remote.upload()

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            self.remote.close()


class S3BundleSink(_SendsToS3, BundleSink):
    def __init__(self, uri: str, *, row_group_rows: int) -> None:
        self.remote, self.sent = _open_remote(uri), {}
        BundleSink.__init__(self, self.remote.staging, row_group_rows=row_group_rows)


class S3IncrementSink(_SendsToS3, IncrementSink):
    """An increment at uri of the bundle at previous, its sibling under one prefix."""

    def __init__(self, uri: str, previous: str, *, row_group_rows: int, checked_runs: int) -> None:
        here, there = s3.parse_s3_url(uri), s3.parse_s3_url(previous)
        if here == there:
            raise BadInputError(f"{here} is the bundle given to --since-bundle; export the increment to a new prefix")
        if (here.bucket, _parent(here.prefix)) != (there.bucket, _parent(there.prefix)) or not there.prefix:
            raise BadInputError(
                f"{there} and {here} are not side by side under one prefix: the links of a chain lie side by side;"
                f" export the increment under s3://{there.bucket}/{_parent(there.prefix)}"
            )
        self._open_since(S3BundleSource(str(there), checked_runs=checked_runs), there.prefix.rsplit("/", 1)[-1])
        try:
            self.remote, self.sent = _open_remote(uri), {}
        except BaseException:
            self.previous.close()
            raise
        self._write_into(self.remote.staging, row_group_rows)


def _parent(prefix: str) -> str:
    return prefix.rsplit("/", 1)[0] if "/" in prefix else ""


class S3Place:
    """Where the links of a chain on S3 lie: side by side under one prefix (chain.earlier_links)."""

    def __init__(self, url: s3.S3Url) -> None:
        self.bucket, self.parent = url.bucket, _parent(url.prefix)

    def open(self, name: str, what: str) -> tuple[Path, S3Files]:
        uri = f"s3://{self.bucket}/{self.parent}/{name}" if self.parent else f"s3://{self.bucket}/{name}"
        remote = S3Bundle(uri, "read")
        if not remote.holds_bundle():
            raise LinkError(uri, f"{what} is missing; put the chain's bundles back side by side under "  # type: ignore[arg-type]
                                 f"s3://{self.bucket}/{self.parent}")
        try:
            return remote.fetch_meta(), S3Files(remote)
        finally:
            remote.close()


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
            super().__init__(meta, checked_runs=checked_runs, files=S3Files(self.remote), place=S3Place(self.remote.url))
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
        return verify_bundle(remote.fetch_meta(), level, files=S3Files(remote), place=S3Place(remote.url))
    finally:
        remote.close()


def inspect_s3_bundle(uri: str) -> dict:
    from trackport.bundle.inspect import inspect_bundle

    return inspect_bundle(S3BundleSource(uri, checked_runs=64))
