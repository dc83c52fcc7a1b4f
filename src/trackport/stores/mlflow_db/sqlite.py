"""An MLflow sqlite database as a source, opened read-only (sqlite `mode=ro`), and the
read-only checks of what a sqlite file is."""
from __future__ import annotations

import functools
import importlib.util
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from trackport.config import DEFAULT, TransferConfig
from trackport.domain import Run
from trackport.errors import BadInputError
from trackport.stores.base import StoreDescription
from trackport.stores.mlflow_db.metric_order import ordered
from trackport.stores.mlflow_db.source import MlflowDatabaseSource
from trackport.stores.mlflow_db.tables import MISSING_SQLALCHEMY, REQUIRED_TABLES, import_sqlalchemy


def sqlite_identity(path: Path) -> str | None:
    """Which database is at path: the stamp trackport puts into each database it makes
    (sqlite's user_version, unused by MLflow), else its first experiment's creation time,
    which MLflow sets when it makes the database and nothing changes afterwards."""
    try:
        with closing(read_only_connection(path)) as con:
            stamp = con.execute("PRAGMA user_version").fetchone()[0]
            first = con.execute(
                "SELECT experiment_id, creation_time FROM experiments ORDER BY experiment_id LIMIT 1"
            ).fetchone()
    except sqlite3.Error:
        return None
    where = f"sqlite:{os.path.realpath(path)}"
    if stamp:
        return f"{where}#stamp-{stamp}"
    if first is not None and first[1] is not None:
        return f"{where}#experiment-{first[0]}-created-{first[1]}"
    return None


def read_only_uri(path: Path) -> str:
    """The URI of the sqlite file at path opened so that nothing can write it (`mode=ro`)."""
    return f"{path.as_uri()}?mode=ro"


def read_only_connection(path: Path, **options: Any) -> sqlite3.Connection:
    return sqlite3.connect(read_only_uri(path), uri=True, **options)


def looks_like_mlflow_db(path: Path) -> bool:
    """Checked with plain sqlite3, read-only: MLflow's store would create its tables in
    any database it is given."""
    try:
        con = read_only_connection(path)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False
    return REQUIRED_TABLES <= names


def _adbc_sqlite() -> Any | None:
    try:
        import adbc_driver_sqlite.dbapi as adbc
    except ImportError:
        return None
    return adbc


class SqliteSource(MlflowDatabaseSource):
    """An MLflow sqlite database, opened read-only (sqlite `mode=ro`): the file is never
    written, created, migrated or locked for writing, so a live server's database is safe."""

    kind = "sqlite"

    def __init__(
        self,
        uri: str,
        path: Path,
        *,
        artifacts_destination: str | None = None,
        config: TransferConfig = DEFAULT,
    ) -> None:
        if importlib.util.find_spec("sqlalchemy") is None:  # imported on first read
            raise BadInputError(MISSING_SQLALCHEMY)
        if not path.is_file():
            raise BadInputError(
                f"no MLflow sqlite store at {path}: check the path (sqlite:///relative or sqlite:////absolute)"
            )
        if not looks_like_mlflow_db(path):
            if Path(f"{path}-journal").exists():  # only a writer can roll it back
                raise BadInputError(
                    f"{path} has the journal of a write that never finished ({path.name}-journal), which a "
                    "read-only reader cannot roll back: start its MLflow server once (or run "
                    f"`sqlite3 {path} 'PRAGMA quick_check'`), then export again"
                )
            raise BadInputError(f"{path} is not an MLflow tracking database")
        self.path = path
        self._ro_uri = read_only_uri(path)
        super().__init__(uri, artifacts_destination=artifacts_destination, config=config)
        self._index_order = self._has_key_step_index()

    def _make_engine(self) -> Any:
        return import_sqlalchemy().create_engine(
            "sqlite://", creator=lambda: sqlite3.connect(self._ro_uri, uri=True, check_same_thread=False)
        )

    @functools.cached_property
    def identity(self) -> str | None:
        return sqlite_identity(self.path)

    def describe(self) -> StoreDescription:
        return StoreDescription(kind=self.kind, uri=self.uri, identity=self.identity)

    @functools.cached_property
    def _adbc(self) -> Any | None:
        return _adbc_sqlite()  # imported on first read: it brings pandas, half a second

    def _has_key_step_index(self) -> bool:
        with sqlite3.connect(self._ro_uri, uri=True) as con:
            for (sql,) in con.execute("SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='metrics'"):
                text = (sql or "").replace('"', "").replace(" ", "").lower()
                if "(run_uuid,key,step" in text:
                    return True
        return False

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        # With MLflow's (run_uuid, key, step) index, ORDER BY key, step costs nothing; the
        # few points sharing a step are ordered in Arrow (see metric_order.ordered).
        # Without it, the database sorts.
        order = "key, step" if self._index_order else "key, step, timestamp, value"
        sql = f"SELECT key, step, timestamp, value, is_nan FROM metrics WHERE run_uuid = ? ORDER BY {order}"
        batches = self._adbc_batches(sql, run.run_id) if self._adbc else self._sqlite3_batches(sql, run.run_id)
        return ordered(batches, self._config.metric_batch_rows)

    def _adbc_batches(self, sql: str, run_id: str) -> Iterator[pa.RecordBatch]:
        con = self._adbc.connect(self._ro_uri)
        try:
            cur = con.cursor()
            try:
                cur.adbc_statement.set_options(
                    **{"adbc.sqlite.query.batch_rows": str(self._config.metric_batch_rows)}
                )
                cur.execute(sql, (run_id,))
                yield from cur.fetch_record_batch()
            finally:
                cur.close()
        finally:
            con.close()

    def _sqlite3_batches(self, sql: str, run_id: str) -> Iterator[pa.RecordBatch]:
        con = sqlite3.connect(self._ro_uri, uri=True)
        try:
            cur = con.execute(sql, (run_id,))
            while rows := cur.fetchmany(self._config.metric_batch_rows):
                keys, steps, stamps, values, nans = zip(*rows)
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(keys, pa.string()), pa.array(steps, pa.int64()), pa.array(stamps, pa.int64()),
                        pa.array(values, pa.float64()), pa.array(nans, pa.int64()),
                    ],
                    names=["key", "step", "timestamp", "value", "is_nan"],
                )
        finally:
            con.close()
