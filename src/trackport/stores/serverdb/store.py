"""A tracking server's PostgreSQL or MySQL (MariaDB) database as a sink: the restore that
skips the server's REST API.

It writes what MLflow's SQL store would hold, in MLflow's own tables, with the rows the sqlite
sink builds (stores.sqlite.rows, and stores.sqlite.models for logged models and the
registry) over connection.Cursor; metric points in bulk (serverdb.metrics). Each run (each
unit) is one transaction on its worker thread's own connection, so a killed restore leaves
whole runs only, and the next one finds them by run_uuid and goes on with the rest.

Before anything is written: the database must hold the schema the installed MLflow makes
(`mlflow db upgrade`), at its revision; and no other session may be connected to it (a
tracking server keeps a pool of connections open), unless the user says the server is
stopped (--server-stopped). With --bulk-load (PostgreSQL, a database holding no runs) the
whole restore is one transaction instead, on one connection, each unit in a savepoint, with
the metrics table's keys and indexes dropped for the load and made again before the commit
(serverdb.bulk). Ids are kept: run ids always, experiment ids where the target
has them free (PostgreSQL's experiment sequence is moved past them, so the server's next
experiment gets a new id). Artifacts go where the server serves them from, as for a
server's sqlite database (stores.sqlite.places: `?artifacts_destination=DIR`).
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

from trackport.config import DEFAULT, TransferConfig, state_home
from trackport.domain import Capabilities, Experiment, Run, TargetExperimentId
from trackport.errors import BadInputError, TrackportError, UnitError
from trackport.locking import TargetLock
from trackport.stores.base import (
    existing_model_policy,
    ExperimentWriteResult,
    SinkStore,
    StoreDescription,
)
from trackport.stores.mlflow_db.uri import split_uri_options
from trackport.stores.serverdb import bulk
from trackport.stores.serverdb.connection import (
    POSTGRES,
    Cursor,
    Target,
    check_revision,
    connect,
    identity,
    other_sessions,
    parse_target,
    revision,
    table_columns,
)
from trackport.stores.serverdb.metrics import write_points
from trackport.stores.sqlite.metrics import PreparedPoints, remove_stale_spools
from trackport.stores.sqlite.models import ModelWriting
from trackport.stores.sqlite.places import PROXIED_ROOT, ready_destination
from trackport.stores.sqlite.rows import Rows
from trackport.stores.sqlite.run_folders import RunFolders
from trackport.stores.sqlite.run_writing import SqlRunWriting
from trackport.stores.sqlite.schema import (
    artifact_root_uri,
    installed_mlflow_version,
    schema_template,
)

T = TypeVar("T")
RETRIES = 2  # a run written again when another transaction made the same dataset row first


class ServerDatabaseSink(SqlRunWriting, ModelWriting, SinkStore):
    """Runs, experiments, logged models and the registry written straight into a tracking
    server's PostgreSQL or MySQL database (stopped server, or none yet)."""

    def __init__(
        self,
        uri: str,
        *,
        artifact_root: str | None = None,
        on_long_value: str = "error",
        on_existing_model: str = "fail",
        config: TransferConfig = DEFAULT,
        server_stopped: bool = False,
        bulk_load: bool = False,
    ) -> None:
        self.on_existing_model = existing_model_policy(on_existing_model)
        self.on_long_value = on_long_value
        bare, destination = split_uri_options(uri)
        self._target: Target = parse_target(bare)
        self.uri = self._target.display
        self._config = config
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._experiment_lock = threading.Lock()  # one experiment made at a time: found by name
        self._lock: TargetLock | None = None
        self._writer_open = False
        self._bulk: list[bulk.Definition] | None = None  # the keys and indexes a bulk load makes again
        self._bulk_lock = threading.RLock()  # one unit at a time on the bulk load's one connection
        self.notices: tuple[str, ...] = (bulk.NOTICE,) if bulk_load else ()
        try:
            self._open(destination, artifact_root, server_stopped, bulk_load)
        except BaseException:
            self.close()
            raise

    def _open(self, destination: str | None, artifact_root: str | None, server_stopped: bool, bulk_load: bool) -> None:
        target = self._target
        if bulk_load:
            bulk.refuse_unless_possible(target, holds_runs=False)  # MySQL/MariaDB: before anything else
        con = self._connection()
        cur = Cursor(con.cursor(), target.backend)
        found = revision(cur)
        con.rollback()  # a missing table aborted PostgreSQL's transaction
        self._mlflow_version = installed_mlflow_version()
        template = schema_template(state_home(), self._mlflow_version)  # MLflow's head revision, built once
        check_revision(found, template.revision, self._mlflow_version, target)
        if not server_stopped:
            sessions = other_sessions(cur, target.backend)
            if sessions:
                raise BadInputError(
                    f"{target.display} is in use ({len(sessions)} other session(s): {'; '.join(sessions[:3])}"
                    f"{'; ...' if len(sessions) > 3 else ''}): stop the tracking server that uses it, or write through"
                    " it (http://...); if no server writes into it, add --server-stopped"
                )
        columns, limits = table_columns(cur, target.backend)
        self._rows = Rows(columns)
        self.identity = identity(cur, target)
        # A database holding no runs is the restore's own, its Default experiment included.
        self._created_here = cur.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is None
        if bulk_load:
            bulk.refuse_unless_possible(target, holds_runs=not self._created_here)
        self._sequence = None
        if target.backend == POSTGRES:
            self._sequence = cur.execute("SELECT pg_get_serial_sequence('experiments', 'experiment_id')").fetchone()[0]
        con.commit()
        self.capabilities = Capabilities(
            keeps_run_ids=True, keeps_experiment_ids=True, keeps_times=True, keeps_users=True,
            keeps_deleted_state=True,
            keeps_infinity=False,  # MLflow's SQL store holds ±inf as ±1.7976931348623157e308
            max_param_value_length=limits.get("params"), max_tag_value_length=limits.get("tags"),
        )
        self._lock = TargetLock(self.state_dir(), self.uri)
        self._artifact_root = artifact_root_uri(artifact_root) if artifact_root else PROXIED_ROOT
        self._destination = ready_destination(destination)
        self._artifact_locations: dict[int, str] = {}
        self._folders = (bulk.DeferredFolders if bulk_load else RunFolders)(self.state_dir(), self.identity)
        remove_stale_spools(self.state_dir())
        self._writer_open = True
        self._folders.settle(self._committed)  # what killed restores left, while holding the lock
        if bulk_load:
            # The load's transaction begins: no other session sees the keys dropped, or any row, before its commit.
            self._bulk_con = con
            found = bulk.definitions(cur)
            bulk.drop(cur, found)
            self._bulk = found

    # ---------------------------------------------------------------- connections

    def _connection(self) -> Any:
        """This thread's connection (each worker writes its runs in transactions of its own);
        in a bulk load, the load's one connection."""
        if self._bulk is not None:
            return self._bulk_con
        con = getattr(self._local, "con", None)
        if con is None or _closed(con):
            con = connect(self._target)
            self._local.con = con
            with self._connections_lock:
                self._connections.append(con)
        return con

    def _write(self, unit: Callable[[Cursor], T], what: str) -> T:
        """unit(cursor) in one transaction on this thread's connection, committed; a unique
        violation (a concurrent run made the same dataset row) is tried again."""
        self._check_writable()
        if self._bulk is not None:
            with self._bulk_lock:
                return self._write_in_load(unit, what)
        for attempt in range(RETRIES + 1):
            con = self._connection()
            try:
                with con.cursor() as raw:
                    result = unit(Cursor(raw, self._target.backend))
                con.commit()
                return result
            except TrackportError:
                _rollback(con)
                raise
            except Exception as exc:  # noqa: BLE001 -- a driver's error: this unit fails, in one line
                _rollback(con)
                if attempt < RETRIES and _integrity_error(exc):
                    continue
                raise UnitError(f"{what}: {_one_line(exc)}") from None
        raise AssertionError("unreachable")

    def _write_in_load(self, unit: Callable[[Cursor], T], what: str) -> T:
        """unit(cursor) in a savepoint of the bulk load's transaction: a unit that fails is undone alone."""
        for attempt in range(RETRIES + 1):
            try:
                with self._bulk_con.transaction(), self._bulk_con.cursor() as raw:  # a savepoint
                    return unit(Cursor(raw, self._target.backend))
            except TrackportError:
                raise
            except Exception as exc:  # noqa: BLE001 -- a driver's error: this unit fails, in one line
                if attempt < RETRIES and _integrity_error(exc):
                    continue
                raise UnitError(f"{what}: {_one_line(exc)}") from None
        raise AssertionError("unreachable")

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        """A query on this thread's connection, in a transaction of its own: it sees what is
        committed (in a bulk load, what the load wrote so far)."""
        if self._bulk is not None:
            try:
                with self._bulk_lock, self._bulk_con.transaction(), self._bulk_con.cursor() as raw:  # a savepoint
                    return Cursor(raw, self._target.backend).execute(sql, params).fetchall()
            except Exception as exc:
                raise UnitError(f"reading {self.uri}: {_one_line(exc)}") from None
        con = self._connection()
        try:
            with con.cursor() as raw:
                rows = Cursor(raw, self._target.backend).execute(sql, params).fetchall()
            con.commit()
            return rows
        except Exception as exc:
            _rollback(con)
            raise UnitError(f"reading {self.uri}: {_one_line(exc)}") from None

    def _check_writable(self) -> None:
        if not self._writer_open:
            raise BadInputError(f"{self.uri} is closed")

    # ---------------------------------------------------------------- common

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="database", uri=self.uri, mlflow_version=self._mlflow_version,
                                identity=self.__dict__.get("identity"))

    def state_dir(self) -> Path:
        path = target_state_dir(self._target)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def finish(self, counts: dict) -> None:
        """A bulk load's end: the keys and indexes made again, then the one commit."""
        if self._bulk is None:
            return
        with self._bulk_lock:
            try:
                with self._bulk_con.cursor() as raw:
                    bulk.remake(Cursor(raw, self._target.backend), self._bulk)
                self._bulk_con.commit()
            except Exception as exc:  # noqa: BLE001 -- nothing is kept: one line
                _rollback(self._bulk_con)
                raise BadInputError(f"the bulk load into {self.uri} was undone, nothing kept: {_one_line(exc)}") from None
            self._bulk = None
            self._folders.all_committed()

    def close(self) -> None:
        self._writer_open = False
        if self._bulk is not None:  # a bulk load not committed: undone, and its run folders removed
            self._bulk = None
            _rollback(self._bulk_con)
            try:
                self._folders.settle(self._committed)
            except Exception:  # noqa: BLE001 -- left for the next open to settle
                pass
        try:
            with self._connections_lock:
                for con in self._connections:
                    try:
                        con.close()
                    except Exception:  # noqa: BLE001 -- a connection already lost closes as well as it can
                        pass
                self._connections.clear()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    # ---------------------------------------------------------------- sink

    def put_experiment(self, experiment: Experiment) -> ExperimentWriteResult:
        with self._experiment_lock:
            exp_id, created = self._write(lambda cursor: self._put_experiment(cursor, experiment),
                                          f"experiment {experiment.name!r}")
        return ExperimentWriteResult(TargetExperimentId(str(exp_id)), created)

    def _put_experiment(self, cursor: Cursor, experiment: Experiment) -> tuple[int, bool]:
        exp_id, made = self._rows.put_experiment(cursor, experiment, self._artifact_root,
                                                 default_is_ours=self._created_here)
        if self._sequence is not None:
            # An experiment inserted at its own id leaves PostgreSQL's sequence behind: the
            # server's next experiment would take an id in use. MySQL's AUTO_INCREMENT moves itself.
            cursor.execute(
                f"SELECT setval('{self._sequence}', m) FROM (SELECT MAX(experiment_id) AS m FROM experiments) t"
                f" WHERE m >= 1 AND m >= (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END"
                f" FROM {self._sequence})"
            )
        return exp_id, made

    def _write_run_rows(self, run: Run, exp_id: int, artifact_uri: str, points: PreparedPoints) -> tuple[int, list[str]]:
        def write_rows(cursor: Cursor):
            self._rows.insert_run(cursor, run, exp_id, artifact_uri)
            self._rows.insert_inputs(cursor, run.run_id, run.inputs, exp_id)
            return write_points(cursor, run.run_id, points)

        stored = self._write(write_rows, f"run {run.run_id}")
        losses = [f"{stored.infinities} ±inf metric points stored as ±1.7976931348623157e308 (as MLflow's SQL store holds them)"
                  ] if stored.infinities else []
        return points.source_points - stored.duplicates, losses


def target_state_dir(target: Target) -> Path:
    """Where transfers into the database keep their lock, id map, ledger and folder claims
    (beside those of tracking servers: state_home()/targets)."""
    return state_home() / "targets" / (re.sub(r"[^A-Za-z0-9._-]+", "_", target.key).strip("_") or "database")


def _closed(con: Any) -> bool:
    closed = getattr(con, "closed", None)  # psycopg: a bool
    if isinstance(closed, bool):
        return closed
    return not getattr(con, "open", True)  # PyMySQL


def _rollback(con: Any) -> None:
    try:
        con.rollback()
    except Exception:  # noqa: BLE001 -- a lost connection: the next unit opens another
        try:
            con.close()
        except Exception:  # noqa: BLE001
            pass


def _integrity_error(exc: BaseException) -> bool:
    return any(cls.__name__ == "IntegrityError" for cls in type(exc).__mro__)


def _one_line(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    text = str(args[1]) if len(args) > 1 and isinstance(args[0], int) else str(exc)  # PyMySQL: (code, message)
    return " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(exc).__name__
