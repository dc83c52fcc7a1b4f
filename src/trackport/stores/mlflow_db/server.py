"""A tracking server's PostgreSQL or MySQL (MariaDB) database as a source, in read-only sessions.

Drivers: psycopg (3) or psycopg2 for PostgreSQL (`pip install 'trackport[postgres]'`), PyMySQL
or mysqlclient for MySQL and MariaDB (`'trackport[mysql]'`). A URI that names no driver
(`postgresql://`, `mysql://`) takes SQLAlchemy's default for the dialect when it is installed,
else the other one that is. The first connection is made when the source opens, so a wrong
password (exit 5), an unreachable server (exit 6) or a missing database (exit 3) is one line
before anything is written; the password never appears in a message (SQLAlchemy's masked URL).
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Any, Iterator

import pyarrow as pa

from trackport.config import DEFAULT, TransferConfig
from trackport.domain import Run, rebatch
from trackport.errors import AuthError, BadInputError, FatalError, UnreachableError
from trackport.stores.base import SourceFeatures
from trackport.stores.mlflow_db.adbc_postgres import AdbcPostgres, adbc_postgres
from trackport.stores.mlflow_db.source import MlflowDatabaseSource
from trackport.stores.mlflow_db.tables import database_url, import_sqlalchemy

# A driverless scheme -> the drivers tried in turn (module to find, SQLAlchemy driver name).
_DRIVERS = {
    "postgresql": (("psycopg2", "psycopg2"), ("psycopg", "psycopg")),
    "mysql": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
    "mariadb": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
}
_EXTRA = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
CONNECT_TIMEOUT = 10  # seconds, unless the URI says (connect_timeout=...)

# What the drivers say when the server refuses the login, or cannot be reached at all.
_AUTH_CODES = {1044, 1045, 1698, 1251}  # MySQL: access denied (user, database), auth plugin
_UNREACHABLE_CODES = {2002, 2003, 2005, 2006, 2013}  # MySQL: cannot connect, unknown host, gone
_AUTH_TEXTS = ("password authentication failed", "no password supplied", "no pg_hba.conf entry",
               "authentication failed", "access denied")
_UNREACHABLE_TEXTS = ("connection refused", "could not translate host name", "name or service not known",
                      "timeout expired", "timed out", "no route to host", "network is unreachable",
                      "could not connect", "can't connect", "connection reset", "no such file or directory")


def _with_driver(sa: Any, url: Any) -> Any:
    """url with a driver that is installed, when it names none."""
    if url.drivername == "postgres":
        url = url.set(drivername="postgresql")
    drivers = _DRIVERS.get(url.drivername)
    if drivers is None:  # a driver named, or a dialect we do not know: as given
        return url
    try:
        default = url.get_dialect().driver
    except Exception:  # noqa: BLE001 -- the dialect cannot even load: try ours below
        default = None
    installed = [name for module, name in drivers if importlib.util.find_spec(module) is not None]
    if default in installed or not installed:
        if not installed:
            raise BadInputError(
                f"{url.drivername}: no database driver is installed; pip install 'trackport[{_EXTRA[url.drivername]}]'"
            )
        return url
    return url.set(drivername=f"{url.drivername}+{installed[0]}")


def _connect_args(url: Any) -> dict:
    if url.get_backend_name() not in _DRIVERS or "connect_timeout" in url.query:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT}


def connection_error(exc: BaseException, display: str) -> FatalError:
    """The one-line error for a database that refused or could not be reached."""
    orig = getattr(exc, "orig", None) or exc
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    text = str(orig.args[1]) if code is not None and len(orig.args) > 1 else str(orig)
    # psycopg: "connection failed: connection to server at "h", port p failed: FATAL:  why"
    reason = " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(orig).__name__
    for marker in ("FATAL: ", "failed: "):
        if marker in reason:
            reason = reason.rsplit(marker, 1)[-1]
            break
    low = text.lower()
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or ""
    if code in _AUTH_CODES or sqlstate.startswith("28") or any(t in low for t in _AUTH_TEXTS):
        return AuthError(f"{display}: the database refused the login ({reason}); check the user and password in the URI")
    if code in _UNREACHABLE_CODES or any(t in low for t in _UNREACHABLE_TEXTS):
        return UnreachableError(f"{display}: cannot reach the database server ({reason}); check the host and port, and that it runs")
    return BadInputError(f"cannot read {display}: {reason}")


class ServerDatabaseSource(MlflowDatabaseSource):
    """A tracking server's PostgreSQL or MySQL database, through SQLAlchemy core, in
    read-only sessions: every connection is set read-only (and that committed, so the
    pool's rollback cannot undo it) before it is used."""

    kind = "database"
    # MLflow's SQL store writes ±inf as ±1.7976931348623157e308 into PostgreSQL and MySQL (the
    # latter cannot hold infinity); a restore into one (stores.serverdb) does the same.
    features = SourceFeatures(clamps_infinity=True)

    def __init__(
        self, uri: str, *, artifacts_destination: str | None = None, config: TransferConfig = DEFAULT
    ) -> None:
        sa = import_sqlalchemy()
        url = database_url(uri)
        display = url.render_as_string(hide_password=True)
        url = _with_driver(sa, url)
        try:
            engine = sa.create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url))
        except ImportError as exc:
            raise BadInputError(
                f"{url.drivername}: the database driver is not installed ({exc}); "
                f"pip install 'trackport[{_EXTRA.get(url.get_backend_name(), 'db')}]'"
            ) from None
        backend = engine.dialect.name

        @sa.event.listens_for(engine, "connect")
        def _read_only(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            try:
                if backend == "postgresql":
                    cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                elif backend in ("mysql", "mariadb"):
                    cur.execute("SET SESSION TRANSACTION READ ONLY")
            finally:
                cur.close()
            # PostgreSQL undoes a SET made in a transaction that is rolled back, and the pool
            # rolls back every connection it is given back: the setting is committed first.
            dbapi_conn.commit()

        self._engine = engine
        self._url, self._backend = url, backend
        super().__init__(display, artifacts_destination=artifacts_destination, config=config)
        try:
            self._db  # noqa: B018 -- refuse a database that is unreachable or not MLflow's now
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ProgrammingError) as exc:
            engine.dispose()
            raise connection_error(exc, display) from None
        except BaseException:
            engine.dispose()
            raise

    def _make_engine(self) -> Any:
        return self._engine

    @functools.cached_property
    def _adbc_pg(self) -> AdbcPostgres | None:
        """ADBC for PostgreSQL's metric histories, when installed (imported on first read)."""
        drivers = adbc_postgres() if self._backend == "postgresql" else None
        return AdbcPostgres(drivers, self._url, self.uri) if drivers is not None else None

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        """Through ADBC, a run's whole history in one query where the database's encoding
        allows (adbc_postgres); else key by key (MlflowDatabaseSource)."""
        adbc = self._adbc_pg
        if adbc is not None and adbc.whole_runs(run.run_id):
            rows = self._config.metric_batch_rows
            yield from rebatch(adbc.run_batches(run.run_id, rows), rows)
        else:
            yield from super().iter_metric_batches(run)

    def _key_batches(self, run_id: str, keys: list[str]) -> Iterator[pa.RecordBatch]:
        if self._adbc_pg is None:
            return super()._key_batches(run_id, keys)
        return self._adbc_pg.key_batches(run_id, keys, self._config.metric_batch_rows)

    def close(self) -> None:
        adbc = self.__dict__.get("_adbc_pg")
        if adbc is not None:
            adbc.close()
        super().close()
