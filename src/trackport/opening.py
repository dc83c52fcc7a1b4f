"""Opening stores from what users type: URIs and paths.

The factory sits above every store adapter (the stores under trackport.stores and the
bundle), so that no adapter needs to know the others: stores.registry decides which kind
a URI names, and the adapter of that kind is imported only when one is opened (a
transfer between local stores never imports the REST client). Every store is opened with
the transfer's TransferConfig.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from trackport.config import DEFAULT, TransferConfig, state_home
from trackport.editing import RunEditor
from trackport.errors import BadInputError, storage_error
from trackport.stores.base import SinkStore, SourceStore
from trackport.stores.registry import DATABASE, KNOWN, PATH, REST, S3, SQLITE, local_path, locate


def _sqlite_uri(uri: str) -> str:
    return uri if uri.startswith("sqlite:") else "sqlite:///" + str(Path(uri).expanduser().absolute())


@contextmanager
def _opening(uri: str) -> Iterator[None]:
    """OS and sqlite errors met while a sink is opened, as trackport's own one-line errors."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        raise (storage_error(exc, f"into {uri}") or BadInputError(f"cannot open {uri} for writing: {exc}")) from None


def _rest_options(uri: str) -> tuple[str, str | None]:
    """A server URL without, and its ?artifacts_destination=s3://... (docs/s3-artifacts.md)."""
    from trackport.stores.mlflow_db.uri import split_uri_options

    return split_uri_options(uri)


def _connected(uri: str, role: str, config: TransferConfig, make: Callable):
    """make(client, info) for the server at uri; the client is closed if make fails."""
    from trackport.stores.rest.server import connect

    client, info = connect(uri, role, config=config)
    try:
        return make(client, info)
    except BaseException:
        client.close()
        raise


def open_source(uri: str, *, config: TransferConfig = DEFAULT) -> SourceStore:
    """A store to read from: a tracking server, a local sqlite store, a tracking server's
    database, a legacy mlruns/ directory or a bundle."""
    location = locate(uri)
    if location.kind == REST:
        from trackport.stores.rest.source import RestSource

        bare, artifacts_destination = _rest_options(uri)
        return _connected(bare, "source", config, lambda client, info: RestSource(
            client, bare, info, config=config, artifacts_destination=artifacts_destination))
    if location.kind == SQLITE:
        from trackport.stores.sqlite.store import SqliteStore

        return SqliteStore(_sqlite_uri(uri), create=False, config=config)
    if location.kind == DATABASE:
        from trackport.stores.mlflow_db.server import ServerDatabaseSource
        from trackport.stores.mlflow_db.uri import split_uri_options

        bare, artifacts_destination = split_uri_options(uri)
        return ServerDatabaseSource(bare, artifacts_destination=artifacts_destination, config=config)
    if location.kind == S3:
        return open_bundle_source(uri, config=config)
    path = local_path(uri)
    if not path.exists():
        raise BadInputError(f"{uri}: no such file or directory; expected {KNOWN}")
    from trackport.bundle import BundleSource, is_bundle

    if is_bundle(path):
        return BundleSource(path, checked_runs=config.bundle_checked_runs)
    from trackport.stores.local_mlruns import MlrunsStore, looks_like_mlruns

    if looks_like_mlruns(path):
        return MlrunsStore(path, config=config)
    raise BadInputError(f"{uri}: not a store trackport can read; expected {KNOWN}")


def _bundle_path(uri: str) -> Path:
    if locate(uri).kind != PATH:
        raise BadInputError(f"{uri}: a bundle is a local directory; use copy to move between stores")
    return local_path(uri)


def verify_bundle_at(uri: str, level: str):
    """bundle verify of the bundle at uri (a local directory or s3://bucket/prefix)."""
    if locate(uri).kind == S3:
        from trackport.bundle.s3_stores import verify_s3_bundle

        return verify_s3_bundle(uri, level)
    from trackport.bundle import verify_bundle

    return verify_bundle(local_path(uri), level)


def inspect_bundle_at(uri: str) -> dict:
    """bundle inspect of the bundle at uri (a local directory or s3://bucket/prefix)."""
    if locate(uri).kind == S3:
        from trackport.bundle.s3_stores import inspect_s3_bundle

        return inspect_s3_bundle(uri)
    from trackport.bundle import inspect_bundle

    return inspect_bundle(local_path(uri))


def open_bundle_source(uri: str, *, config: TransferConfig = DEFAULT) -> SourceStore:
    """The bundle at uri (a local directory or s3://bucket/prefix), to read from."""
    from trackport.bundle import BundleSource

    if locate(uri).kind == S3:
        from trackport.bundle.s3_stores import S3BundleSource

        return S3BundleSource(uri, checked_runs=config.bundle_checked_runs)
    return BundleSource(_bundle_path(uri), checked_runs=config.bundle_checked_runs)


def open_bundle_sink(uri: str, *, config: TransferConfig = DEFAULT, since: str | None = None) -> SinkStore:
    """The bundle at uri (made if missing), to write into; since: the bundle an increment
    is made from (export --since-bundle), opened and checked first."""
    from trackport.bundle import BundleSink

    if locate(uri).kind == S3 or (since is not None and locate(since).kind == S3):
        from trackport.bundle.s3_stores import S3BundleSink, S3IncrementSink

        if since is None:
            return S3BundleSink(uri, row_group_rows=config.bundle_row_group_rows)
        if locate(uri).kind != S3 or locate(since).kind != S3:
            raise BadInputError(f"{since} and {uri}: the links of a chain lie side by side; keep both on S3 or both local")
        return S3IncrementSink(
            uri, since, row_group_rows=config.bundle_row_group_rows, checked_runs=config.bundle_checked_runs
        )
    path = _bundle_path(uri)
    if since is not None:
        from trackport.bundle.increment import IncrementSink

        previous = _bundle_path(since)
        with _opening(uri):
            return IncrementSink(
                path, previous, row_group_rows=config.bundle_row_group_rows, checked_runs=config.bundle_checked_runs
            )
    with _opening(uri):
        return BundleSink(path, row_group_rows=config.bundle_row_group_rows)


def open_sink(
    uri: str,
    *,
    artifact_root: str | None = None,
    on_long_value: str = "error",
    on_existing_model: str = "fail",
    config: TransferConfig = DEFAULT,
    artifacts_direct: bool = False,
    server_stopped: bool = False,
    bulk_load: bool = False,
    state_scope: str | None = None,
) -> SinkStore:
    """A store to write into: a tracking server, a local sqlite store (created if missing)
    or a bundle. The sink holds the target's lock until it is closed. on_existing_model:
    what to do with a registered model of the target trackport did not write (fail, skip,
    append); a bundle has none. artifacts_direct: a tracking server's artifacts are
    written straight into its S3 bucket (docs/s3-artifacts.md); other stores ignore it.
    server_stopped: a sqlite database an MLflow server on this machine seems to use, or a
    PostgreSQL/MySQL database other sessions are connected to, is written all the same
    (stores.sqlite.in_use, stores.serverdb); other stores ignore it. bulk_load: a PostgreSQL
    database holding no runs takes the whole transfer in one transaction, its metrics keys
    and indexes made again at the end (stores.serverdb.bulk); any other target is refused.
    state_scope: a server's id map, ledger and lock are kept apart under this name (the shards of one plan
    write into one server at once: transfer.shards); other stores ignore it."""
    location = locate(uri)
    if bulk_load and location.kind != DATABASE:
        raise BadInputError(f"--bulk-load writes into a PostgreSQL database (postgresql://...) only; leave it out for a {location.kind} target")
    if location.kind == REST:
        from trackport.stores.rest.sink import RestSink

        bare, artifacts_destination = _rest_options(uri)
        state_root = None if state_scope is None else state_home() / "targets" / "shards" / state_scope
        return _connected(bare, "target", config, lambda client, info: RestSink(
            client, bare, info, on_long_value=on_long_value, on_existing_model=on_existing_model, config=config,
            artifacts_direct=artifacts_direct, artifacts_destination=artifacts_destination, state_root=state_root,
        ))
    if location.kind == SQLITE:
        from trackport.stores.sqlite.store import SqliteStore

        with _opening(uri):
            return SqliteStore(
                _sqlite_uri(uri), create=True, artifact_root=artifact_root, on_existing_model=on_existing_model,
                config=config, server_stopped=server_stopped,
            )
    if location.kind == DATABASE:
        from trackport.stores.serverdb.store import ServerDatabaseSink

        return ServerDatabaseSink(
            uri, artifact_root=artifact_root, on_long_value=on_long_value, on_existing_model=on_existing_model,
            config=config, server_stopped=server_stopped, bulk_load=bulk_load,
        )
    from trackport.stores.local_mlruns import looks_like_mlruns

    if looks_like_mlruns(local_path(uri)):
        raise BadInputError(
            f"{uri}: cannot write here; give sqlite:///path/mlflow.db for a local MLflow store"
            " (the legacy mlruns/ file store is read-only) or a new directory for a bundle"
        )
    return open_bundle_sink(uri, config=config)  # it refuses anything else that is not a bundle or empty


def state_dir_for(uri: str) -> Path:
    """The directory where transfers into the store at uri keep their id map and ledger,
    found without opening the store (nothing is created or contacted)."""
    location = locate(uri)
    if location.kind == REST:
        from trackport.stores.rest.auth import resolve_connection
        from trackport.stores.rest.sink import state_dir_for_url

        return state_dir_for_url(state_home() / "targets", resolve_connection(uri, "target").base_url)
    if location.kind == SQLITE:
        from trackport.stores.sqlite.files import sqlite_path_from_uri, sqlite_state_dir

        return sqlite_state_dir(sqlite_path_from_uri(_sqlite_uri(uri)))
    if location.kind == DATABASE:
        from trackport.stores.mlflow_db.uri import split_uri_options
        from trackport.stores.serverdb.connection import parse_target
        from trackport.stores.serverdb.store import target_state_dir

        return target_state_dir(parse_target(split_uri_options(uri)[0]))
    from trackport.bundle.layout import TRANSFER_DIR

    if location.kind == S3:
        from trackport.bundle.s3_bundle import staging_root

        return staging_root(uri) / "export" / TRANSFER_DIR
    return local_path(uri) / TRANSFER_DIR


def open_editor(uri: str, *, config: TransferConfig = DEFAULT, write: bool = True) -> RunEditor:
    """A store whose runs can be tagged, renamed, deleted and restored in place: a tracking
    server or a local sqlite store, holding the target's lock until it is closed (write=False:
    read only, for a dry run, without the lock). A bundle, an mlruns folder and a server's
    database are refused: they are records or read-only here."""
    location = locate(uri)
    if location.kind == REST:
        from trackport.stores.rest.editor import RestEditor

        return _connected(uri, "target", config, lambda client, info: RestEditor(
            client, uri, info, config=config, write=write))
    if location.kind == SQLITE:
        from trackport.stores.sqlite.editor import SqliteEditor

        return SqliteEditor(_sqlite_uri(uri), config=config, write=write)
    what = "a tracking server's database is read only" if location.kind == DATABASE else "bundles and mlruns folders are read only"
    raise BadInputError(
        f"{uri}: cannot edit runs here ({what}); runs are edited in a tracking server (http(s)://..., databricks)"
        " or a local sqlite store (sqlite:///path/mlflow.db)"
    )
