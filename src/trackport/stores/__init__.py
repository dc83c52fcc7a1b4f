"""Opening stores from what users type: URIs and paths."""
from __future__ import annotations

from pathlib import Path

from trackport.errors import BadInputError
from trackport.stores.base import SinkStore, SourceStore

_KINDS_HELP = "expected sqlite:///path/mlflow.db, an mlruns/ directory or a trackport bundle directory"


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


def open_source(uri: str) -> SourceStore:
    """A store to read from: a local sqlite store, a legacy mlruns/ directory or a bundle."""
    if _is_remote(uri):
        raise BadInputError(f"{uri}: tracking servers are not supported by this version yet; {_KINDS_HELP}")
    if sqlite := _sqlite_path(uri):
        from trackport.stores.local_sqlite import SqliteStore

        return SqliteStore(sqlite, create=False)
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


def open_sink(uri: str, *, artifact_root: str | None = None) -> SinkStore:
    """A store to write into: a local sqlite store (created if missing) or a bundle."""
    if _is_remote(uri):
        raise BadInputError(f"{uri}: tracking servers are not supported by this version yet; {_KINDS_HELP}")
    if sqlite := _sqlite_path(uri):
        from trackport.stores.local_sqlite import SqliteStore

        return SqliteStore(sqlite, create=True, artifact_root=artifact_root)
    path = _local_path(uri)
    from trackport.bundle import is_bundle

    if is_bundle(path) or not path.exists():
        return open_bundle_sink(str(path))
    raise BadInputError(
        f"{uri}: cannot write here; give sqlite:///path/mlflow.db for a local MLflow store"
        " (the legacy mlruns/ file store is read-only) or a new directory for a bundle"
    )
