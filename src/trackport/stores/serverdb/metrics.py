"""A run's metric points into a server database's `metrics` and `latest_metrics`, in bulk,
inside the run's transaction.

The points arrive as stores.sqlite.metrics prepares them (MLflow's stored form: NaN as 0
with is_nan set; each key's latest point), read from the source before the transaction
starts. Here they also get what MLflow's SQL store does to ±inf, which neither database
column holds the way sqlite does (MySQL's DOUBLE has no infinity): ±1.7976931348623157e308,
the same values a server writes and reads back (a loss the sink reports).

PostgreSQL takes them through COPY ... FROM STDIN in CSV, each batch written by Arrow's
CSV writer (doubles in their shortest round-trip form), so no point becomes a Python object.
MySQL takes a multi-row INSERT: PyMySQL's executemany folds the rows into statements of up
to about 1 MB, under any server's max_allowed_packet (MySQL 8 and MariaDB default to 16-64 MB).

Exact duplicates (MLflow's primary key forbids them; its store keeps one) are dropped where
the source's order puts them side by side: every source gives a history sorted by (key,
step, timestamp, value).
"""
from __future__ import annotations

import io
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from trackport.stores.serverdb.connection import POSTGRES, Cursor
from trackport.stores.sqlite.metrics import PreparedPoints

MAX_FLOAT = 1.7976931348623157e308  # what MLflow's SQL store writes for +inf (and its negative for -inf)
MYSQL_ROWS_PER_CALL = 20_000  # rows handed to one executemany (it splits them into ~1 MB statements)
_COLUMNS = ("key", "value", "timestamp", "step", "is_nan")
_COPY = "COPY metrics (key, value, timestamp, step, is_nan, run_uuid) FROM STDIN WITH (FORMAT csv)"
_MYSQL_INSERT = ("INSERT INTO metrics (`key`, value, timestamp, step, is_nan, run_uuid)"
                 " VALUES (%s, %s, %s, %s, %s, %s)")
_LATEST = "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)"


def clamp(value: float) -> float:
    if value == float("inf"):
        return MAX_FLOAT
    return -MAX_FLOAT if value == float("-inf") else value


class ServerPoints:
    """A run's prepared points as the server database stores them; counts what was
    changed (infinities clamped) and dropped (adjacent exact duplicates)."""

    def __init__(self, points: PreparedPoints) -> None:
        self.points = points
        self.infinities = 0
        self.duplicates = 0

    def batches(self) -> Iterator[pa.RecordBatch]:
        previous: pa.RecordBatch | None = None  # the last row of the batch before
        for batch in self.points.batches():
            if batch.num_rows == 0:
                continue
            batch = self._clamped(batch)
            keep = _not_repeated(batch, previous)
            previous = batch.slice(batch.num_rows - 1)
            if keep is not None:
                before = batch.num_rows
                batch = batch.filter(keep)
                self.duplicates += before - batch.num_rows
            if batch.num_rows:
                yield batch

    def _clamped(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        value = batch.column("value")
        infinite = pc.is_inf(value)
        count = pc.sum(infinite).as_py() or 0
        if not count:
            return batch
        self.infinities += count
        clamped = pc.if_else(infinite, pc.if_else(pc.greater(value, 0), MAX_FLOAT, -MAX_FLOAT), value)
        return batch.set_column(batch.schema.get_field_index("value"), "value", clamped)

    def latest_rows(self, run_id: str) -> list[tuple]:
        return [(k, clamp(v), ts, step, bool(nan), run_id) for k, (step, ts, v, nan) in self.points.latest.items()]


def _not_repeated(batch: pa.RecordBatch, previous: pa.RecordBatch | None) -> pa.Array | None:
    """A mask of the rows that are not an exact copy of the row before them (the previous
    batch's last row before the first); None when every row is kept."""
    rows = pa.Table.from_batches([previous, batch]) if previous is not None else pa.Table.from_batches([batch])
    n = rows.num_rows
    if n < 2:
        return None
    same = None
    for name in _COLUMNS:
        column = rows.column(name)
        equal = pc.equal(column.slice(1), column.slice(0, n - 1))
        same = equal if same is None else pc.and_(same, equal)
    repeated = pc.fill_null(same, False).combine_chunks()
    if not pc.any(repeated).as_py():
        return None
    if previous is None:  # the first row has no row before it
        repeated = pa.concat_arrays([pa.array([False]), repeated])
    return pc.invert(repeated)


def write_points(cursor: Cursor, run_id: str, points: PreparedPoints) -> ServerPoints:
    """Every point of the run, then each key's latest point; the run holds none yet."""
    stored = ServerPoints(points)
    if cursor.backend == POSTGRES:
        _copy_postgres(cursor, run_id, stored)
    else:
        _insert_mysql(cursor, run_id, stored)
    cursor.executemany(_LATEST, stored.latest_rows(run_id))
    return stored


def _copy_postgres(cursor: Cursor, run_id: str, stored: ServerPoints) -> None:
    options = pa_csv.WriteOptions(include_header=False)
    with cursor.raw.copy(_COPY) as copy:
        for batch in stored.batches():
            table = pa.table({
                "key": batch.column("key"),
                "value": batch.column("value"),
                "timestamp": batch.column("timestamp"),
                "step": batch.column("step"),
                "is_nan": pc.cast(batch.column("is_nan"), pa.bool_()),  # PostgreSQL's boolean: true/false
                "run_uuid": pa.repeat(pa.scalar(run_id), batch.num_rows),
            })
            out = io.BytesIO()
            pa_csv.write_csv(table, out, options)
            copy.write(out.getbuffer())


def _insert_mysql(cursor: Cursor, run_id: str, stored: ServerPoints) -> None:
    for batch in stored.batches():
        columns = [batch.column(name).to_pylist() for name in _COLUMNS]
        rows = [(*row, run_id) for row in zip(*columns)]
        for start in range(0, len(rows), MYSQL_ROWS_PER_CALL):
            cursor.raw.executemany(_MYSQL_INSERT, rows[start : start + MYSQL_ROWS_PER_CALL])
