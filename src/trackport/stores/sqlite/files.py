"""Where a local sqlite store's files are, and how a database is made ready for writing.

A new database is a copy of MLflow's schema template, stamped with an identity of its
own, made behind a filling marker (`<db>.trackport/filling`, written before the database
exists): while the transfer that made it fills it, it is written without fsyncs, and a
marker that outlives its transfer gets the database checked before anything more is
written. An existing database is first opened for writing once, so that sqlite rolls
back the journal a killed writer left, and written only at the schema revision the
installed MLflow expects.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from trackport.errors import BadInputError
from trackport.stores.mlflow_db.sqlite import looks_like_mlflow_db, read_only_connection, sqlite_identity
from trackport.stores.mlflow_db.uri import split_uri_options
from trackport.stores.sqlite.group_commit import BUSY_TIMEOUT_S
from trackport.stores.sqlite.schema import (
    SchemaTemplate,
    check_revision,
    create_database,
    refuse_leftover_journal,
)

FILLING_MARKER = "filling"


def sqlite_path_from_uri(uri: str) -> Path:
    """sqlite:///rel/path.db, sqlite:////abs/path.db, or a plain path ending in .db (a
    trailing ?artifacts_destination=... is not part of the path)."""
    uri = split_uri_options(uri)[0]
    if uri.startswith("sqlite:///"):
        raw = uri[len("sqlite:///") :]
    elif uri.startswith("sqlite:"):
        raise BadInputError(f"unsupported sqlite URI {uri!r}: use sqlite:///path/to/mlflow.db")
    elif uri.endswith(".db"):
        raw = uri
    else:
        raise BadInputError(f"{uri!r} is not a sqlite store: use sqlite:///path/to/mlflow.db")
    if not raw or raw == ":memory:":
        raise BadInputError(f"{uri!r} names no database file: use sqlite:///path/to/mlflow.db")
    return Path(raw).expanduser().absolute()


def sqlite_state_dir(db_path: Path) -> Path:
    """Where transfers into the database at db_path keep their lock, id map and ledger."""
    return Path(str(db_path) + ".trackport")


def default_artifact_root(db_path: Path) -> Path:
    """Where a store keeps new experiments' artifacts unless told otherwise: a folder of
    its own beside it (`mlflow.db` -> `mlflow-artifacts/`), so two stores side by side
    never share one."""
    return db_path.parent / f"{db_path.stem}-artifacts"


@dataclass(frozen=True)
class OpenedForWriting:
    created_here: bool  # this transfer made the database
    identity: str | None  # mlflow_db.sqlite.sqlite_identity
    filling_marker: Path
    filling: bool  # written without fsyncs until the marker is removed at close


def open_for_writing(path: Path, template: SchemaTemplate, artifact_root_uri: str) -> OpenedForWriting:
    """The database at path, made from the template if missing (its Default experiment's
    artifacts under artifact_root_uri), or checked if it exists."""
    marker = sqlite_state_dir(path) / FILLING_MARKER
    created_here = not path.exists()
    if created_here:
        refuse_leftover_journal(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()  # before the database exists
        create_database(path, template, artifact_root_uri)
        identity = sqlite_identity(path)
        marker.write_text(identity or "")
    elif not (_recover(path) and looks_like_mlflow_db(path)):
        raise BadInputError(f"{path} is not an MLflow tracking database")
    else:
        check_revision(path, template)
        identity = sqlite_identity(path)
        if marker.exists():
            if marker.read_text() not in ("", identity):
                marker.unlink()  # left by a deleted database of this name: not this one's
            else:
                _check_unfinished_fill(path)
    return OpenedForWriting(created_here, identity, marker, marker.exists())


def _recover(path: Path) -> bool:
    """Open the database for writing once, so that sqlite rolls back the journal a killed
    writer left (a read-only connection cannot, and would find no tables); False if it is
    no sqlite database."""
    try:
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)) as con:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError:
        return False
    return True


def _check_unfinished_fill(path: Path) -> None:
    """A database this tool was filling with synchronous=OFF when its transfer ended
    without the final fsync: a killed process loses nothing committed, but a power cut
    may have torn pages, so it is checked before anything more is written."""
    with closing(read_only_connection(path, timeout=BUSY_TIMEOUT_S)) as con:
        try:
            problem = con.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
    if problem != "ok":
        first = " ".join(problem.replace("*** in database main ***", "").split())[:200]
        raise BadInputError(
            f"{path} was being created by a transfer that did not finish, and is damaged ({first}): "
            f"delete it and {sqlite_state_dir(path)}, then run the transfer again"
        )
