"""Where a sqlite sink puts the files of runs and logged models, a tracking server's database
included.

A server with proxied artifacts (`mlflow server --artifacts-destination DIR`, MLflow's
default) gives its experiments the location `mlflow-artifacts:/<experiment id>`, its runs
`mlflow-artifacts:/<experiment id>/<run id>/artifacts` and its logged models
`mlflow-artifacts:/<experiment id>/models/<model id>/artifacts`; it serves
`mlflow-artifacts:/<path>` from `DIR/<path>` (mlflow.server.handlers,
_get_proxied_run_artifact_destination_path, over a local artifact repository rooted at DIR).
The target URI names DIR as the reader's does: `sqlite:///srv/mlflow.db?artifacts_destination=DIR`.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlparse

from trackport.errors import BadInputError, UnitError
from trackport.stores._localfs import local_artifact_dir
from trackport.stores.mlflow_db.sqlite import read_only_connection
from trackport.stores.mlflow_db.uri import ARTIFACTS_PARAM, artifacts_root

PROXIED = "mlflow-artifacts:"
PROXIED_ROOT = "mlflow-artifacts:/"  # MLflow's DEFAULT_ARTIFACTS_URI


def uses_proxied_artifacts(path: Path) -> bool:
    """Whether experiments of the database at path keep their artifacts through a tracking
    server (`mlflow-artifacts:` locations)."""
    try:
        with closing(read_only_connection(path)) as con:
            return con.execute(
                "SELECT 1 FROM experiments WHERE artifact_location LIKE ? LIMIT 1", (PROXIED + "%",)
            ).fetchone() is not None
    except sqlite3.Error:  # not an MLflow database: opening it for writing says so
        return False


def new_experiments_root(path: Path, artifact_root: str | None, destination: str | None) -> str | None:
    """Where new experiments of the database at path keep their artifacts, when not the
    store's own default (None): --artifact-root if given; else, for a server's database
    (the target URI names its artifacts destination, or its experiments use the server's
    proxy), the server's own `mlflow-artifacts:/`, so that it serves them."""
    if artifact_root is not None:
        return artifact_root
    if destination is not None or (path.is_file() and uses_proxied_artifacts(path)):
        return PROXIED_ROOT
    return None


def ready_destination(destination: str | None) -> Path | None:
    """The local directory the target URI's artifacts destination names, made if missing
    (a server makes it on its first artifact) when its parent exists."""
    if destination is None:
        return None
    parsed = urlparse(destination)
    if parsed.scheme not in ("", "file") and len(parsed.scheme) > 1:
        raise BadInputError(
            f"{ARTIFACTS_PARAM}={destination}: a server database is written here with a local artifacts destination"
            " only (a directory or file:// URI); write through the tracking server (http(s)://...) instead"
        )
    root = artifacts_root(destination)
    if not root.is_dir():
        try:
            root.mkdir()
        except OSError as exc:
            raise BadInputError(
                f"{ARTIFACTS_PARAM}={destination}: cannot use {root} ({exc.strerror}); give the directory the"
                " tracking server keeps its artifacts in (its --artifacts-destination)"
            ) from None
    return root


def artifacts_folder(uri: str | None, unit_id: str, what: str, destination: Path | None) -> Path | None:
    """The local folder an artifact URI of the target names (None for none): a server's
    `mlflow-artifacts:/<path>` is destination/<path>; UnitError, one line, where it is not
    local or the destination was not given."""
    if uri and uri.startswith(PROXIED):
        if destination is None:
            raise UnitError(
                f"{what} {unit_id}: its artifacts go to {uri}, which the tracking server keeps: add"
                f" ?{ARTIFACTS_PARAM}=<the server's --artifacts-destination directory> to the target URI"
            )
        root = destination.resolve()
        full = (root / unquote(urlparse(uri).path).lstrip("/")).resolve()
        if not full.is_relative_to(root) or full == root:
            raise UnitError(f"{what} {unit_id}: artifact URI {uri} points outside {root}")
        return full
    try:
        return local_artifact_dir(uri, unit_id)
    except UnitError as exc:
        raise UnitError(str(exc).replace(f"run {unit_id}", f"{what} {unit_id}", 1)) from None


def unit_folder(artifact_uri: str, unit_id: str, files: list, what: str, destination: Path | None) -> Path | None:
    """The folder of a run or logged model (its artifacts/ folder's parent) when its
    artifacts are local; one with files to write needs one, one without is not refused."""
    try:
        artifact_dir = artifacts_folder(artifact_uri, unit_id, what, destination)
    except UnitError:
        if files:
            raise
        return None  # nothing to write, and nothing of ours to check there
    if artifact_dir is None:
        if files:
            raise UnitError(f"{what} {unit_id}: the target has no artifact location for it")
        return None
    return artifact_dir.parent
