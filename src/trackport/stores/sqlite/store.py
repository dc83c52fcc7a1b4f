"""A local MLflow sqlite tracking store, as a source and as a sink.

As a source it is mlflow_db.sqlite.SqliteSource: read-only (sqlite mode=ro), never
MLflow's store layer. As a sink, MLflow is not imported either: a new database is a copy
of a schema MLflow built once for the installed version (schema), an existing one is
written only when its schema revision is that version's, and runs go into MLflow's tables
(rows) over one raw sqlite3 connection, each run in a savepoint of a transaction shared
with the runs written at the same time (group_commit), metric points in bulk (metrics).
That is the only way to keep run ids, experiment ids, times and deleted state, and is far
faster than the store's per-entity API for large metric histories.

The journal mode and synchronous setting of a database someone else made stay what its
owner chose (WAL is persistent, synchronous=OFF risks the owner's data). A database made
here gets a page size of our choosing and, while the transfer that made it fills it,
synchronous=OFF: each commit then costs no fsync, so every run is committed as soon as it
is written. A marker beside the database (`<db>.trackport/filling`) says so until the
last commit is fsynced at close; a database whose marker outlived its transfer (killed,
or the machine lost power) is checked with PRAGMA quick_check before anything is written
into it again.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Callable, TypeVar

from trackport.config import DEFAULT, TransferConfig, state_home
from trackport.domain import (
    Capabilities,
    Experiment,
    Run,
    TargetExperimentId,
)
from trackport._files import fsync_dir
from trackport.errors import BadInputError, UnitError, storage_error
from trackport.locking import TargetLock
from trackport.stores.base import (
    existing_model_policy,
    ExperimentWriteResult,
    SinkStore,
    StoreDescription,
)
from trackport.stores.mlflow_db.sqlite import SqliteSource
from trackport.stores.mlflow_db.uri import split_uri_options
from trackport.stores.sqlite.files import (
    default_artifact_root,
    open_for_writing,
    sqlite_path_from_uri,
    sqlite_state_dir,
)
from trackport.stores.sqlite.group_commit import BUSY_TIMEOUT_S, CommitError, GroupCommitWriter
from trackport.stores.sqlite.metrics import PreparedPoints, insert_points, metric_inserts, remove_stale_spools
from trackport.stores.sqlite.models import ModelWriting
from trackport.stores.sqlite.in_use import servers_using
from trackport.stores.sqlite.patch import SqlitePatching
from trackport.stores.sqlite.places import new_experiments_root, ready_destination
from trackport.stores.sqlite.rows import Rows
from trackport.stores.sqlite.run_folders import RunFolders
from trackport.stores.sqlite.run_writing import SqlRunWriting
from trackport.stores.sqlite.schema import (
    artifact_root_uri,
    installed_mlflow_version,
    schema_template,
)

T = TypeVar("T")


class SqliteStore(SqliteSource, SqlRunWriting, ModelWriting, SqlitePatching, SinkStore):
    """Read through SqliteSource (read-only, never MLflow's store layer); as a sink
    (create=True), a database of the installed MLflow's schema, made from its template if
    missing, written in bulk (logged models and the registry: sqlite.models), its runs
    brought up to date in place by trackport sync (sqlite.patch)."""

    capabilities = Capabilities.lossless()

    def __init__(
        self,
        uri: str,
        *,
        create: bool,
        artifact_root: str | None = None,
        on_existing_model: str = "fail",
        config: TransferConfig = DEFAULT,
        server_stopped: bool = False,
    ) -> None:
        self.on_existing_model = existing_model_policy(on_existing_model)
        bare, artifacts_destination = split_uri_options(uri)
        path = sqlite_path_from_uri(bare)
        self._writer: GroupCommitWriter | None = None
        self._destination: Path | None = None  # a server's --artifacts-destination, from ?artifacts_destination=
        self._lock: TargetLock | None = None
        self._mlflow_version: str | None = None
        if create:
            if not server_stopped and path.is_file():
                refuse_running_server(path)
            state_dir = sqlite_state_dir(path)
            made_state_dir = not state_dir.exists()
            self._lock = TargetLock(state_dir, str(path))
            try:
                self._open_for_writing(path, new_experiments_root(path, artifact_root, artifacts_destination), config)
                self._destination = ready_destination(artifacts_destination)
            except BaseException:
                self.close()
                if made_state_dir and not path.exists():  # refused before anything was made
                    shutil.rmtree(state_dir, ignore_errors=True)
                raise
        SqliteSource.__init__(self, uri, path, artifacts_destination=artifacts_destination, config=config)
        if create:  # what killed transfers into this store left: cleared while holding its lock
            self.__dict__["identity"] = self._folders.store_identity  # read once, while opening
            # Metrics are read back through Python's sqlite3, never ADBC's own copy of SQLite:
            # POSIX locks are per process, so that copy cannot see this process's write lock
            # and takes the open transaction's journal for a hot one ("attempt to write a
            # readonly database" on a read during a sync).
            self.__dict__["_adbc"] = None
            self._folders.settle(self._committed)

    def _open_for_writing(self, path: Path, artifact_root: str | None, config: TransferConfig) -> None:
        self._mlflow_version = installed_mlflow_version()
        template = schema_template(state_home(), self._mlflow_version)
        self._artifact_root = artifact_root_uri(artifact_root or str(default_artifact_root(path)))
        opened = open_for_writing(path, template, self._artifact_root)
        # MLflow puts a `Default` experiment into every database it creates; in a database
        # we create, that experiment is ours to make equal to the source's.
        self._created_here = opened.created_here
        self._filling_marker = opened.filling_marker
        self._filling = opened.filling
        self._rows = Rows.of_sqlite(path)
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._artifact_locations: dict[int, str] = {}
        if self._filling:  # commits are cheap: no run waits for another's
            self._writer = GroupCommitWriter(path, max_units=1, synchronous_off=True)
        else:  # half the workers may wait for a commit while the others prepare their runs
            self._writer = GroupCommitWriter(path, max_units=max(1, config.workers // 2))
        self._folders = RunFolders(sqlite_state_dir(path), opened.identity)
        remove_stale_spools(sqlite_state_dir(path))

    # ---------------------------------------------------------------- common

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="sqlite", uri=self.uri, mlflow_version=self._mlflow_version, identity=self.identity)

    def close(self) -> None:
        try:
            super().close()
            if self._writer is not None:
                self._writer.close()
                for con in self._reader_connections:
                    con.close()
                if self._filling:
                    with open(self.path, "rb") as db:
                        os.fsync(db.fileno())
                    fsync_dir(self.path.parent)  # the database's own name, made by a rename
                    self._filling_marker.unlink(missing_ok=True)
                self._writer = None
        except (OSError, sqlite3.Error) as exc:
            raise (storage_error(exc, str(self.path)) or exc) from None
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _write(self, unit: Callable[[sqlite3.Cursor], T], what: str) -> T:
        """unit(cursor) written and committed by the group-commit writer; what names it in errors."""
        try:
            return self._writer.write(unit)
        except (sqlite3.Error, CommitError) as exc:
            raise _write_error(exc, what, self.path) from None

    def _check_writable(self) -> None:
        if self._writer is None:
            raise BadInputError(f"{self.uri} was opened read-only")

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        """A query on this thread's read connection: it sees committed rows only, so not
        the runs of the writer's open transaction (it may wait out a commit)."""
        con = getattr(self._readers, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            self._readers.con = con
            self._reader_connections.append(con)
        return con.execute(sql, params).fetchall()

    # ---------------------------------------------------------------- sink

    def state_dir(self) -> Path:
        path = sqlite_state_dir(self.path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_experiment(self, experiment: Experiment) -> ExperimentWriteResult:
        self._check_writable()
        exp_id, created = self._write(lambda cursor: self._put_experiment(cursor, experiment), f"experiment {experiment.name!r}")
        return ExperimentWriteResult(TargetExperimentId(str(exp_id)), created)

    def _put_experiment(self, cursor: sqlite3.Cursor, experiment: Experiment) -> tuple[int, bool]:
        return self._rows.put_experiment(cursor, experiment, self._artifact_root, default_is_ours=self._created_here)

    def _write_run_rows(self, run: Run, exp_id: int, artifact_uri: str, points: PreparedPoints) -> tuple[int, list[str]]:
        # The first statements are made before the writer is asked, so that slow sources
        # do not hold up the other runs' rows.
        inserts = metric_inserts(run.run_id, points, self._config.sqlite_ahead_points)

        def write_rows(cursor: sqlite3.Cursor) -> int:
            self._rows.insert_run(cursor, run, exp_id, artifact_uri)
            self._rows.insert_inputs(cursor, run.run_id, run.inputs, exp_id)
            return insert_points(cursor, run.run_id, points, inserts)

        return self._write(write_rows, f"run {run.run_id}"), []


def refuse_running_server(path: Path) -> None:
    """Refuse, one line, a database an MLflow server on this machine is known to be using."""
    servers = servers_using(path)
    if servers:
        raise BadInputError(
            f"{path} is in use by a running MLflow server ({'; '.join(servers)}): stop the server, or write"
            " through it (http://...); if the server is stopped or uses another file, add --server-stopped"
        )


def _write_error(exc: BaseException, what: str, path: Path) -> Exception:
    """A write the database refused: a full or read-only disk stops the transfer."""
    cause = exc.__cause__ if isinstance(exc, CommitError) else exc
    return storage_error(cause, f"{what} into {path}") or UnitError(f"{what}: {exc}")

