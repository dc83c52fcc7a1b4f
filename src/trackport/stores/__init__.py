"""Opening stores from what users type: URIs and paths."""
from __future__ import annotations

import os
from pathlib import Path

from trackport.domain import DEFAULT_WORKERS
from trackport.errors import BadInputError
from trackport.stores.base import SinkStore, SourceStore

_KINDS_HELP = (
    "expected http(s)://tracking-server, databricks[://PROFILE], sqlite:///path/mlflow.db,"
    " postgresql://... or mysql://... (a tracking server's database, read-only),"
    " an mlruns/ directory or a trackport bundle directory"
)


def state_home() -> Path:
    """Where trackport keeps what belongs to no store on disk (the id maps and ledgers of
    transfers into tracking servers): $TRACKPORT_HOME, else ~/.trackport."""
    return Path(os.environ.get("TRACKPORT_HOME") or Path.home() / ".trackport")


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def _sqlite_path(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return uri
    if uri.endswith(".db"):
        return "sqlite:///" + str(Path(uri).absolute())
    return None


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def open_source(uri: str, *, workers: int = DEFAULT_WORKERS) -> SourceStore:
    """A store to read from: a tracking server, a local sqlite store, a legacy mlruns/
    directory or a bundle."""
    if _is_remote(uri):
        from trackport.stores.rest.server import connect
        from trackport.stores.rest.source import RestSource

        client, info = connect(uri, "source", pool_size=2 * workers)
        return RestSource(client, uri, info)
    if sqlite := _sqlite_path(uri):
        from trackport.stores.local_sqlite import SqliteStore

        return SqliteStore(sqlite, create=False)
    from trackport.stores.sql_reader import ServerDatabaseSource, is_server_db_uri, split_uri_options

    if is_server_db_uri(uri):
        bare, artifacts_destination = split_uri_options(uri)
        return ServerDatabaseSource(bare, artifacts_destination=artifacts_destination)
    path = _local_path(uri)
    if not path.exists():
        raise BadInputError(f"{uri}: no such file or directory; {_KINDS_HELP}")
    from trackport.bundle import BundleSource, is_bundle

    if is_bundle(path):
        return BundleSource(path)
    from trackport.stores.local_mlruns import MlrunsStore, looks_like_mlruns

    if looks_like_mlruns(path):
        return MlrunsStore(path)
    raise BadInputError(f"{uri}: not a store trackport can read; {_KINDS_HELP}")


def open_bundle_source(path: str) -> SourceStore:
    from trackport.bundle import BundleSource

    return BundleSource(Path(path))


def open_bundle_sink(path: str) -> SinkStore:
    from trackport.bundle import BundleSink

    return BundleSink(Path(path))


def open_sink(
    uri: str, *, artifact_root: str | None = None, on_long_value: str = "error", workers: int = DEFAULT_WORKERS
) -> SinkStore:
    """A store to write into: a tracking server, a local sqlite store (created if missing)
    or a bundle."""
    if _is_remote(uri):
        from trackport.stores.rest.server import connect
        from trackport.stores.rest.sink import RestSink

        client, info = connect(uri, "target", pool_size=2 * workers)
        return RestSink(client, uri, info, on_long_value=on_long_value)
    if sqlite := _sqlite_path(uri):
        from trackport.stores.local_sqlite import SqliteStore

        return SqliteStore(sqlite, create=True, artifact_root=artifact_root, workers=workers)
    from trackport.stores.sql_reader import is_server_db_uri

    if is_server_db_uri(uri):
        raise BadInputError(
            f"{uri.split('://', 1)[0]}://...: a tracking server's database is read here only as a"
            " source; write through the tracking server (http(s)://...) instead"
        )
    path = _local_path(uri)
    from trackport.bundle import is_bundle

    if is_bundle(path) or not path.exists():
        return open_bundle_sink(str(path))
    raise BadInputError(
        f"{uri}: cannot write here; give sqlite:///path/mlflow.db for a local MLflow store"
        " (the legacy mlruns/ file store is read-only) or a new directory for a bundle"
    )


def state_dir_for(uri: str) -> Path:
    """The directory where transfers into the store at uri keep their id map and ledger,
    found without opening the store (nothing is created or contacted)."""
    if _is_remote(uri):
        from trackport.stores.rest.auth import resolve_connection
        from trackport.stores.rest.sink import state_dir_for_url

        return state_dir_for_url(state_home() / "targets", resolve_connection(uri, "target").base_url)
    if sqlite := _sqlite_path(uri):
        from trackport.stores.local_sqlite import sqlite_path_from_uri, sqlite_state_dir

        return sqlite_state_dir(sqlite_path_from_uri(sqlite))
    from trackport.bundle.layout import TRANSFER_DIR

    return _local_path(uri) / TRANSFER_DIR
