"""Connections to a tracking server's PostgreSQL or MySQL (MariaDB) database for writing, and
what is checked before anything is written: the schema revision and other sessions.

Writing takes its own drivers, whatever the URI's SQLAlchemy driver name says: psycopg (3)
for PostgreSQL, whose COPY is the bulk path for metric points, and PyMySQL for MySQL and
MariaDB, whose executemany turns an INSERT into multi-row statements. SQLAlchemy only parses
the URI and masks its password for messages (as the reader does, stores.mlflow_db.server).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from trackport.errors import BadInputError
from trackport.stores.mlflow_db.server import CONNECT_TIMEOUT, connection_error
from trackport.stores.mlflow_db.tables import database_url

POSTGRES, MYSQL = "postgresql", "mysql"
_BACKENDS = {"postgresql": POSTGRES, "postgres": POSTGRES, "mysql": MYSQL, "mariadb": MYSQL}
_DRIVER = {POSTGRES: ("psycopg", "postgres"), MYSQL: ("pymysql", "mysql")}  # module, extra
# MySQL reserves `key`, a column of several MLflow tables; the SQL shared with the sqlite
# sink (stores.sqlite.rows, models) names it bare, so it is quoted for MySQL on the way.
_KEY = re.compile(r"(?<![\w`.'])(\w+\.)?key\b(?!')")


@dataclass(frozen=True)
class Target:
    """A database URI taken apart: never shown with its password (display is masked)."""

    backend: str  # POSTGRES | MYSQL
    display: str
    host: str
    port: int | None
    user: str | None
    password: str | None = field(repr=False)
    database: str
    options: dict = field(default_factory=dict)  # the URI's query (sslmode=..., unix_socket=...)

    @property
    def key(self) -> str:
        """The database's place, for its records (state directory): host, port and name."""
        return f"{self.backend}_{self.host}_{self.port or ''}_{self.database}"

    @property
    def upgrade_command(self) -> str:
        return f"mlflow db upgrade {self.display}"


def parse_target(uri: str) -> Target:
    url = database_url(uri)
    display = url.render_as_string(hide_password=True)
    backend = _BACKENDS.get(url.drivername.split("+", 1)[0])
    if backend is None:
        raise BadInputError(f"{display}: trackport writes into PostgreSQL and MySQL/MariaDB databases only")
    if not url.database:
        raise BadInputError(f"{display}: the URI names no database; add /<database> after the host")
    module, extra = _DRIVER[backend]
    if importlib.util.find_spec(module) is None:
        raise BadInputError(f"{display}: writing into {backend} needs {module}; pip install 'trackport[{extra}]'")
    return Target(backend, display, url.host or "localhost", url.port, url.username, url.password, url.database,
                  dict(url.query))


def connect(target: Target) -> Any:
    """A new DB-API connection in a transaction of its own (no autocommit); one line with
    the right exit code when the server refuses the login (5), cannot be reached (6) or has
    no such database (3)."""
    options = dict(target.options)
    options.setdefault("connect_timeout", CONNECT_TIMEOUT)
    try:
        if target.backend == POSTGRES:
            import psycopg

            # Named in pg_stat_activity, so that another restore's in-use refusal says what it saw.
            options.setdefault("application_name", "trackport")

            return psycopg.connect(host=target.host, port=target.port or 5432, user=target.user,
                                   password=target.password, dbname=target.database, **options)
        import pymysql

        options["connect_timeout"] = int(options["connect_timeout"])
        con = pymysql.connect(host=target.host, port=target.port or 3306, user=target.user,
                              password=target.password or "", database=target.database, charset="utf8mb4",
                              autocommit=False, **options)
        with con.cursor() as cur:
            # An experiment keeps id 0 (MLflow's Default) only so: MySQL's AUTO_INCREMENT
            # takes a 0 for "the next one" otherwise (MLflow's own store sets it the same way).
            cur.execute("SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'NO_AUTO_VALUE_ON_ZERO')")
        return con
    except Exception as exc:  # noqa: BLE001 -- every driver error is said in one line below
        if isinstance(exc, ImportError):
            raise
        error = connection_error(exc, target.display)
        if type(error) is BadInputError:  # the reader's words: here the database is written
            error = BadInputError(str(error).replace("cannot read", "cannot write into", 1))
        raise error from None


class Cursor:
    """A DB-API cursor that takes the sqlite sink's SQL (stores.sqlite.rows and models: `?`
    placeholders, `execute(...).fetchone()`, iteration): one source of the rows MLflow's
    tables hold, whichever database they go to."""

    def __init__(self, raw: Any, backend: str) -> None:
        self.raw = raw
        self.backend = backend

    def sql(self, sql: str) -> str:
        sql = sql.replace("%", "%%").replace("?", "%s")
        return _KEY.sub(lambda m: f"{m.group(1) or ''}`key`", sql) if self.backend == MYSQL else sql

    def execute(self, sql: str, params: Sequence = ()) -> "Cursor":
        self.raw.execute(self.sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> "Cursor":
        rows = list(rows)
        if rows:
            self.raw.executemany(self.sql(sql), rows)
        return self

    def fetchone(self) -> tuple | None:
        return self.raw.fetchone()

    def fetchall(self) -> list[tuple]:
        return list(self.raw.fetchall())

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.raw.fetchall())


def revision(cur: Cursor) -> str | None:
    """The database's alembic revision; None where it has no (single) one, or no table."""
    try:
        cur.execute("SELECT version_num FROM alembic_version")
        rows = cur.fetchall()
    except Exception:  # noqa: BLE001 -- no such table: not a database MLflow made
        return None
    return rows[0][0] if len(rows) == 1 else None


def check_revision(found: str | None, expected: str, mlflow_version: str, target: Target) -> None:
    """Refuse, one line, a database whose schema is not the installed MLflow's."""
    if found == expected:
        return
    if found is None:
        raise BadInputError(
            f"cannot write into {target.display}: it holds no MLflow schema; make one with: {target.upgrade_command}"
        )
    raise BadInputError(
        f"cannot write into {target.display}: its MLflow schema is at revision {found}, MLflow {mlflow_version}"
        f" expects {expected}; if the database is older, back it up and run: {target.upgrade_command}"
        " (if newer, upgrade MLflow)"
    )


def other_sessions(cur: Cursor, backend: str) -> list[str]:
    """The other sessions connected to this database, as `pid N user U from A (application)`:
    a tracking server keeps a pool of them open while it runs. PostgreSQL lists every
    session in pg_stat_activity; MySQL shows in its PROCESSLIST another user's connections
    only to users with the PROCESS privilege."""
    if backend == POSTGRES:
        cur.execute(
            "SELECT pid, usename, client_addr, application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid"
        )
        return [f"pid {pid} user {user} from {addr or 'local'}" + (f" ({app})" if app else "")
                for pid, user, addr, app in cur.fetchall()]
    cur.execute(
        "SELECT ID, USER, HOST, COMMAND FROM information_schema.PROCESSLIST"
        " WHERE DB = DATABASE() AND ID <> CONNECTION_ID() ORDER BY ID"
    )
    return [f"connection {cid} user {user} from {host} ({command})" for cid, user, host, command in cur.fetchall()]


def table_columns(cur: Cursor, backend: str) -> tuple[dict[str, frozenset[str]], dict[str, int]]:
    """Every table's columns in this database's schema, and the character limits of the
    params' and tags' values (varchar lengths: a longer value would fail its run)."""
    schema = "current_schema()" if backend == POSTGRES else "DATABASE()"
    cur.execute(
        "SELECT table_name, column_name, character_maximum_length FROM information_schema.columns"
        f" WHERE table_schema = {schema}"
    )
    columns: dict[str, set[str]] = {}
    limits: dict[str, int] = {}
    for table, column, length in cur.fetchall():
        columns.setdefault(table, set()).add(column)
        if column == "value" and table in ("params", "tags") and length:
            limits[table] = int(length)
    return {t: frozenset(c) for t, c in columns.items()}, limits


def identity(cur: Cursor, target: Target) -> str:
    """Which database this is, so that one dropped and made again under the same name is
    told apart from the one earlier transfers wrote: PostgreSQL's database oid; for MySQL,
    when its alembic_version table was made (`mlflow db upgrade` made it)."""
    if target.backend == POSTGRES:
        cur.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
    else:
        cur.execute(
            "SELECT CREATE_TIME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
            " AND TABLE_NAME = 'alembic_version'"
        )
    row = cur.fetchone()
    return f"{target.key}#{row[0] if row else ''}"
