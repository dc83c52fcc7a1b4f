"""MLflow's sqlite schema, without importing MLflow on every transfer.

Importing MLflow's store layer and letting it build a schema through its migrations took
4-6 s and about 105 MB here: longer than writing a million metric points. So MLflow builds an
empty database once per installed MLflow version, kept as a template in trackport's home;
a new store is a copy of it, and an existing store is written only when its schema
revision is the template's (the one the installed MLflow expects). MLflow stays the only
author of the schema; trackport only copies what MLflow made.
"""
from __future__ import annotations

import os
import posixpath
import secrets
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from trackport.errors import BadInputError
from trackport.stores.mlflow_db.sqlite import read_only_connection

# A page size is fixed when a database is made. sqlite's default (4 KiB) splits pages four
# times as often while the metrics table and its three indexes grow; 16 KiB pages write
# metric points about a third faster, and MLflow reads them the same.
PAGE_SIZE = 16384
DEFAULT_EXPERIMENT_ID = 0
MISSING_MLFLOW = "writing a local MLflow store needs MLflow: pip install 'trackport[local]'"


@dataclass(frozen=True)
class SchemaTemplate:
    path: Path
    mlflow_version: str
    revision: str  # alembic revision of the schema


def installed_mlflow_version() -> str:
    """The installed MLflow's version, read from its package metadata (no import)."""
    for distribution in ("mlflow", "mlflow-skinny"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    raise BadInputError(MISSING_MLFLOW)


def schema_template(home: Path, mlflow_version: str) -> SchemaTemplate:
    """The template for this MLflow version under home, built by MLflow if missing or
    unusable (made under a temporary name and renamed, so concurrent transfers are safe)."""
    path = home / "sqlite-templates" / f"mlflow-{mlflow_version}-p{PAGE_SIZE}.db"
    revision = schema_revision(path) if path.is_file() else None
    if revision is None:
        _build_template(path)
        revision = schema_revision(path)
        if revision is None:
            raise RuntimeError(f"MLflow built {path} without an alembic revision")
    return SchemaTemplate(path, mlflow_version, revision)


def schema_revision(path: Path) -> str | None:
    """The alembic revision of the MLflow database at path; None if it has none."""
    try:
        with closing(read_only_connection(path)) as con:
            rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError:
        return None
    return rows[0][0] if len(rows) == 1 else None


def refuse_leftover_journal(path: Path) -> None:
    """A journal or write-ahead log beside a database that does not exist belongs to a
    deleted one of that name, and sqlite would replay it into the new database."""
    for suffix in ("-wal", "-journal"):
        leftover = Path(f"{path}{suffix}")
        if leftover.exists():
            raise BadInputError(
                f"{leftover} is left from a deleted database named {path.name}, and sqlite would apply it to "
                f"a new one: remove it (and {path.name}-shm, if any) or choose another path"
            )


def create_database(path: Path, template: SchemaTemplate, artifact_root_uri: str) -> None:
    """A new MLflow database at path: a copy of the template whose Default experiment is
    what MLflow would have made here (artifacts under artifact_root_uri, created now).
    Copied under a temporary name and renamed once complete, so a transfer killed
    meanwhile leaves no half-made database."""
    for stale in path.parent.glob(f".{path.name}.creating-*"):
        stale.unlink(missing_ok=True)
    temp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    try:
        shutil.copyfile(template.path, temp)
        now = int(time.time() * 1000)
        with closing(sqlite3.connect(temp)) as con, con:
            con.execute(
                "UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                "WHERE experiment_id = ?",
                (experiment_artifact_location(artifact_root_uri, DEFAULT_EXPERIMENT_ID), now, now, DEFAULT_EXPERIMENT_ID),
            )
            # Which database this is, for the records kept beside it (sqlite_identity): the
            # Default experiment's times change when the source's Default lands here.
            con.execute(f"PRAGMA user_version = {secrets.randbelow(2**31 - 1) + 1}")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def check_revision(path: Path, template: SchemaTemplate) -> None:
    """Refuse an existing database whose schema is not the one the installed MLflow
    expects: its tables may have columns trackport would not fill."""
    revision = schema_revision(path)
    if revision != template.revision:
        raise BadInputError(
            f"cannot write into {path}: its MLflow schema is at revision {revision or 'unknown'}, "
            f"MLflow {template.mlflow_version} expects {template.revision}; if the database is older, "
            f"back it up and run: mlflow db upgrade sqlite:///{path} (if newer, upgrade MLflow)"
        )


def artifact_root_uri(root: str) -> str:
    """The artifact root as MLflow's store keeps it: a local path made absolute (also inside
    a file: URI); any other URI as given."""
    parsed = urlparse(root)
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # one letter: a Windows drive
        return Path(root).absolute().as_posix()
    if parsed.scheme == "file" and not parsed.path.startswith("/"):
        return urlunparse(parsed._replace(netloc="", path=(Path.cwd() / parsed.path).as_posix()))
    return root


def experiment_artifact_location(root_uri: str, experiment_id: int | str) -> str:
    return append_to_uri_path(root_uri, str(experiment_id))


def append_to_uri_path(uri: str, *paths: str) -> str:
    """POSIX paths appended to the path of uri, as MLflow's function of that name does."""
    suffix = ""
    for part in paths:
        suffix = _join(suffix, part)
    parsed = urlparse(uri)
    if not parsed.scheme:
        return _join(uri, suffix)
    prefix = ""
    if not parsed.path.startswith("/"):  # urlunparse would make a relative path absolute
        prefix, parsed = parsed.scheme + ":", parsed._replace(scheme="")
    return prefix + urlunparse(parsed._replace(path=_join(parsed.path, suffix)))


def _join(prefix: str, suffix: str) -> str:
    return posixpath.join(prefix, suffix.lstrip("/")) if prefix else suffix


def _build_template(path: Path) -> None:
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError as exc:
        raise BadInputError(MISSING_MLFLOW) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    # Builds killed midway leave their directory; a build takes seconds, so one an hour
    # old is nobody's.
    for stale in path.parent.glob(".building-*"):
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=path.parent))
    try:
        temp = work / path.name
        with closing(sqlite3.connect(temp)) as con:
            con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            con.execute("VACUUM")
        # The Default experiment's artifact location is rewritten in every copy.
        SqlAlchemyStore(f"sqlite:///{temp}", str(work / "artifacts")).engine.dispose()
        os.replace(temp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
