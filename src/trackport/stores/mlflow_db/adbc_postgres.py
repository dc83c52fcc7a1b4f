"""PostgreSQL metric histories through ADBC (`adbc-driver-postgresql`, in the `postgres`
extra): the driver streams a query's result with COPY in PostgreSQL's binary format straight
into Arrow, with no Python object per value. Measured on one run of 1,000,000 points (10
keys, PostgreSQL 15 on the same machine, trackport's whole read into METRIC_SCHEMA batches):
0.67-0.75 M points/s through ADBC against 0.18 M through psycopg's server-side cursor and
SQLAlchemy rows, so ADBC is used when it is installed.

A run's whole history is one query, ordered by (key in the "C" collation, step, timestamp,
value): "C" compares bytes, which in UTF8 (or SQL_ASCII holding UTF-8, or LATIN1) is code
point order, whatever collation the database has. One query per key (the index's order) cost
a statement, a plan and a round trip per key, and a DISTINCT first: on the benchmark's runs
(10 keys of 1,000 points, 20 runs) 1.7-2.0 s key by key, 0.66-0.84 s run by run. A database in
another encoding is read key by key, as before.

Only the driver manager's low-level API is used: its DB-API module also imports
pyarrow.dataset (0.08 s more, measured with pandas loaded, as pyarrow loads it on its first
array anyway).

Connections are libpq's own, opened with `default_transaction_read_only=on` (a startup
option: no rollback can undo it), kept in a small pool for the source's life (a login costs
milliseconds, and a workspace has many small runs), and closed with the source.
"""
from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote, urlencode

import pyarrow as pa

from trackport.errors import UnitError
from trackport.stores.mlflow_db.metric_order import to_batch

READ_ONLY_OPTION = "-c default_transaction_read_only=on"
BATCH_HINT = "adbc.postgresql.batch_size_hint_bytes"
BYTES_PER_ROW = 48  # about what one metric point takes in COPY's binary format, for the batch hint
# Encodings whose byte order (the "C" collation) is code point order.
CODE_POINT_ENCODINGS = frozenset({"UTF8", "SQL_ASCII", "LATIN1"})
RUN_QUERY = (
    "SELECT key, step, timestamp, value, is_nan FROM metrics WHERE run_uuid = {run} "
    'ORDER BY key COLLATE "C", step, timestamp, value'
)
KEY_QUERY = (
    "SELECT step, timestamp, value, is_nan FROM metrics WHERE run_uuid = {run} AND key = {key} "
    "ORDER BY step, timestamp, value"
)


def literal(text: str) -> str:
    """text as a PostgreSQL escape-string literal, safe whatever standard_conforming_strings
    says. The values are inlined, not bound: ADBC streams only a query without parameters
    (through COPY); with parameters libpq receives the whole result before the first batch."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def adbc_postgres() -> tuple[Any, Any] | None:
    """The ADBC driver manager and PostgreSQL driver modules, if installed."""
    try:
        import adbc_driver_manager
        import adbc_driver_postgresql
    except ImportError:
        return None
    return adbc_driver_manager, adbc_driver_postgresql


def libpq_uri(url: Any) -> str:
    """A SQLAlchemy URL of a PostgreSQL database as a libpq URI whose sessions are read-only."""
    query = dict(url.query)
    options = query.get("options")
    options = options if isinstance(options, str) else " ".join(options or ())
    query["options"] = f"{options} {READ_ONLY_OPTION}".strip()
    base = url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    return f"{base}?{urlencode(query, doseq=True, quote_via=quote)}"


class AdbcPostgres:
    """Metric batches of a PostgreSQL database, run by run, through pooled ADBC connections."""

    def __init__(self, drivers: tuple[Any, Any], url: Any, display: str) -> None:
        self._manager, self._driver = drivers
        self._uri = libpq_uri(url)
        self._secret = url.password or None
        self._display = display
        self._lock = threading.Lock()
        self._database: Any = None  # the driver's database handle, made with the first connection
        self._code_points: bool | None = None
        self._encoding_lock = threading.Lock()  # the encoding asked by one thread, not by each worker
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                if self._database is None:
                    self._database = self._driver.connect(self._uri)
            conn = self._manager.AdbcConnection(self._database)  # autocommit, ADBC's default
        try:
            yield conn
        except BaseException:
            conn.close()  # in an unknown state: not given back
            raise
        self._idle.put(conn)

    def _stream(self, conn: Any, sql: str, rows: int | None = None) -> Iterator[pa.RecordBatch]:
        statement = self._manager.AdbcStatement(conn)
        reader = None
        try:
            if rows is not None:
                statement.set_options(**{BATCH_HINT: str(max(rows, 1) * BYTES_PER_ROW)})
            statement.set_sql_query(sql)
            handle, _ = statement.execute_query()
            reader = pa.RecordBatchReader._import_from_c(handle.address)
            for batch in reader:
                if batch.num_rows:
                    yield batch
        finally:
            if reader is not None:
                reader.close()
            statement.close()

    def query(self, sql: str) -> pa.Table:
        """The whole result of a small query (its errors: the driver's)."""
        with self.connection() as conn:
            batches = list(self._stream(conn, sql))
        return pa.Table.from_batches(batches) if batches else pa.table({})

    def whole_runs(self, run_id: str) -> bool:
        """Whether a run's history can be read in one query ordered by code point (the
        database's encoding orders bytes as code points), asked once (on reading run_id)."""
        with self._encoding_lock:
            if self._code_points is None:
                try:
                    encoding = self.query("SELECT pg_catalog.getdatabaseencoding()").column(0)[0].as_py()
                except self._manager.Error as exc:
                    raise self._failed(run_id, exc) from None
                self._code_points = encoding in CODE_POINT_ENCODINGS
            return self._code_points

    def run_batches(self, run_id: str, rows: int) -> Iterator[pa.RecordBatch]:
        """METRIC_SCHEMA batches of the run's whole history, by (key by code point, step,
        timestamp, value), streamed."""
        try:
            with self.connection() as conn:
                for batch in self._stream(conn, RUN_QUERY.format(run=literal(run_id)), rows):
                    yield to_batch(*batch.columns)
        except self._manager.Error as exc:
            raise self._failed(run_id, exc) from None

    def key_batches(self, run_id: str, keys: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        """(key, step, timestamp, value) batches of the run, key after key in the given order."""
        try:
            with self.connection() as conn:
                for key in keys:
                    for batch in self._stream(conn, KEY_QUERY.format(run=literal(run_id), key=literal(key)), rows):
                        keys_column = pa.array([key] * batch.num_rows, pa.string())
                        yield to_batch(keys_column, *batch.columns)
        except self._manager.Error as exc:
            raise self._failed(run_id, exc) from None

    def _failed(self, run_id: str, exc: Exception) -> UnitError:
        reason = " ".join(str(exc).split())
        if self._secret:
            reason = reason.replace(self._secret, "***")
        return UnitError(f"run {run_id}: reading its metrics from {self._display} failed: {reason}")

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        with self._lock:
            if self._database is not None:
                try:
                    self._database.close()
                except RuntimeError:
                    # A connection is still out: a history read stopped half-way (its
                    # generator not closed, e.g. by an error being raised): the driver closes
                    # it when it is collected; raising here would hide that error.
                    pass
                self._database = None
