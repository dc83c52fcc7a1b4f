"""Metric points into MLflow's sqlite `metrics` and `latest_metrics` tables, in bulk.

The work is split so that the single sqlite writer does as little as possible:
`prepare_points` runs on the caller's thread, outside the writer, reading the source and
computing MLflow's stored form (NaN as 0 with is_nan set) and each key's latest point;
`metric_inserts` makes the statements and their values, the first ones before the writer
is asked; `insert_points` runs inside the writer's transaction and executes them.
"""
from __future__ import annotations

import functools
import itertools
import os
import shutil
import sqlite3
import tempfile
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from trackport.domain import METRIC_SCHEMA

ROWS_PER_INSERT = 1000  # larger VALUES lists measured slower, smaller ones re-seek more

STORED_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("value", pa.float64(), nullable=False),
    pa.field("timestamp", pa.int64(), nullable=False),
    pa.field("step", pa.int64(), nullable=False),
    pa.field("is_nan", pa.int8(), nullable=False),
])


class PreparedPoints:
    """A run's points in stored form, in memory or spooled, and each key's latest point
    (key -> (step, timestamp, stored value, is_nan))."""

    def __init__(self) -> None:
        self.source_points = 0
        self.latest: dict[str, tuple] = {}
        self._batches: list[pa.RecordBatch] = []
        self._spool: Path | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        if self._spool is None:
            yield from self._batches
            return
        with pa.memory_map(str(self._spool)) as source:
            yield from pa.ipc.open_stream(source)


@contextmanager
def prepare_points(
    batches: Iterator[pa.RecordBatch], spool_dir: Path, in_memory_points: int
) -> Iterator[PreparedPoints]:
    """Read the source's metric batches into PreparedPoints; a spool file, if one was
    needed, is removed on exit. Runs of up to in_memory_points points stay in memory
    between prepare and insert (about 8 MB per waiting run at the default of
    config.sqlite_in_memory_points); larger ones go through an Arrow file, so memory stays
    flat however long a history is."""
    points = PreparedPoints()
    spool_file = writer = None
    try:
        for batch in batches:
            stored = _stored(batch)
            _update_latest(points.latest, stored)
            points.source_points += stored.num_rows
            if writer is None and points.source_points <= in_memory_points:
                points._batches.append(stored)
                continue
            if writer is None:  # too many for memory: all of it goes to a spool file
                handle, name = tempfile.mkstemp(dir=spool_dir, prefix=f"spool-{os.getpid()}-", suffix=".arrow")
                os.close(handle)
                points._spool = Path(name)
                spool_file = pa.OSFile(name, "wb")
                writer = pa.ipc.new_stream(spool_file, STORED_SCHEMA)
                for held in points._batches:
                    writer.write_batch(held)
                points._batches = []
            writer.write_batch(stored)
        if writer is not None:
            writer.close()
            spool_file.close()
            writer = None
        yield points
    finally:
        try:
            if writer is not None:
                writer.close()
                spool_file.close()
        finally:  # removed even when closing fails (a full disk): the error is already on its way
            if points._spool is not None:
                points._spool.unlink(missing_ok=True)


def remove_stale_spools(spool_dir: Path) -> None:
    """Remove the spool files of transfers that were killed: those whose process is gone."""
    for path in spool_dir.glob("spool-*") if spool_dir.is_dir() else ():
        pid = path.name.split("-")[1]
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        if path.is_dir():  # spools of trackport 0.1 were directories
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metric_inserts(run_id: str, points: PreparedPoints, ahead_points: int) -> Iterator[tuple[str, list[Any]]]:
    """The INSERT statements of the prepared points with their values, those of the first
    ahead_points points made now (about 4 MB of Python values per waiting run at the
    default of config.sqlite_ahead_points), the rest inside the writer: the writer is
    sqlite's single thread, so the Python work it need not do while holding it is done on
    the caller's."""
    statements = _statements(run_id, points)
    ahead = list(itertools.islice(statements, max(1, ahead_points // rows_per_insert())))
    return itertools.chain(ahead, statements)


def _statements(run_id: str, points: PreparedPoints) -> Iterator[tuple[str, list[Any]]]:
    # OR IGNORE collapses exact duplicates, which the primary key forbids; MLflow's SQL
    # store drops them the same way. Many rows per statement: a one-row INSERT re-opens and
    # re-seeks the table and its three indexes for every point.
    per_statement = rows_per_insert()
    for batch in points.batches():
        keys = batch.column("key").to_pylist()
        nans = batch.column("is_nan")
        nans = nans.to_pylist() if pc.max(nans).as_py() else None
        per_row = [batch.column(name).to_pylist() for name in ("value", "timestamp", "step")]
        for start in range(0, batch.num_rows, per_statement):
            end = min(batch.num_rows, start + per_statement)
            chunk_keys = keys[start:end]
            one_key = chunk_keys.count(chunk_keys[0]) == len(chunk_keys)
            with_nan = nans is not None and any(nans[start:end])
            columns = [*([] if one_key else [chunk_keys]), *(c[start:end] for c in per_row),
                       *([nans[start:end]] if with_nan else [])]
            head = [run_id, chunk_keys[0]] if one_key else [run_id]
            # Row-major values after the shared ones, interleaved by slice assignment.
            values: list[Any] = head + [None] * (len(columns) * (end - start))
            for i, column in enumerate(columns):
                values[len(head) + i :: len(columns)] = column
            yield metric_insert_sql(end - start, one_key, with_nan), values


def insert_points(
    cursor: sqlite3.Cursor, run_id: str, points: PreparedPoints, inserts: Iterator[tuple[str, list[Any]]]
) -> int:
    """Execute a run's metric inserts and bring its latest points up to date; return the
    number of points stored. The run may hold points already (a sync appending to it)."""
    con = cursor.connection
    before = con.total_changes
    for sql, values in inserts:
        cursor.execute(sql, values)
    stored_points = con.total_changes - before
    cursor.executemany(_LATEST_SQL, [(k, v, ts, step, nan, run_id) for k, (step, ts, v, nan) in points.latest.items()])
    return stored_points


def collapsed_loss(points: PreparedPoints, stored_points: int) -> str | None:
    """The loss to report when fewer points were stored than prepared: exact duplicates
    (of each other, or of points the run held) kept once."""
    if stored_points >= points.source_points:
        return None
    return (
        f"{points.source_points - stored_points} exact duplicate metric points collapsed "
        "(MLflow's SQL store keeps one of each)"
    )


# A key's latest point replaced only by a greater (step, timestamp, stored value), as
# MLflow's _update_latest_metrics_if_necessary decides; a new key's inserted.
_LATEST_SQL = (
    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, "
    "step = excluded.step, is_nan = excluded.is_nan "
    "WHERE (excluded.step, excluded.timestamp, excluded.value) "
    "> (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)


@functools.cache
def rows_per_insert() -> int:
    """Rows per metric INSERT: ROWS_PER_INSERT, or fewer if sqlite binds fewer variables
    (5 per row at most, plus 2 shared)."""
    with closing(sqlite3.connect(":memory:")) as con:
        if hasattr(con, "getlimit"):  # Python 3.11+
            limit = con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        else:  # sqlite's default maximum, raised in 3.32
            limit = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return max(1, min(ROWS_PER_INSERT, (limit - 2) // 5))


@functools.lru_cache(maxsize=64)  # a few shapes recur in every run; making one takes ms
def metric_insert_sql(rows: int, one_key: bool, with_nan: bool) -> str:
    """An INSERT of `rows` metric points with numbered parameters: ?1 the run id, ?2 the
    key when all rows share it, is_nan the constant 0 when no row is NaN. Binding fewer
    values per point is most of what a faster insert can save."""
    number = 3 if one_key else 2
    rows_sql = []
    for _ in range(rows):
        fields = []
        for column in ("key", "value", "timestamp", "step", "is_nan"):
            if column == "key" and one_key:
                fields.append("?2")
            elif column == "is_nan" and not with_nan:
                fields.append("0")
            else:
                fields.append(f"?{number}")
                number += 1
        key, value, timestamp, step, is_nan = fields
        rows_sql.append(f"({key},{value},{timestamp},?1,{step},{is_nan})")
    return "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES " + ",".join(rows_sql)


def _stored(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A source batch in MLflow's stored form: NaN as 0 with is_nan set; infinities stay
    real (sqlite REAL holds them)."""
    columns = {f.name: batch.column(f.name).cast(f.type) for f in METRIC_SCHEMA}
    is_nan = pc.fill_null(pc.is_nan(columns["value"]), False)
    return pa.RecordBatch.from_arrays(
        [columns["key"], pc.if_else(is_nan, pa.scalar(0.0, pa.float64()), columns["value"]),
         columns["timestamp"], columns["step"], pc.cast(is_nan, pa.int8())],
        schema=STORED_SCHEMA,
    )


def _update_latest(latest: dict[str, tuple], batch: pa.RecordBatch) -> None:
    """Fold a stored batch into latest: key -> (step, timestamp, stored value, is_nan), the
    maximum by that tuple, as MLflow chooses it. Only each key's rows at its highest step
    in the batch are looked at in Python."""
    keys, steps = batch.column("key"), batch.column("step")
    top = pa.table({"key": keys, "step": steps}).group_by("key").aggregate([("step", "max")])
    at_top = pc.equal(steps, pc.take(top.column("step_max"), pc.index_in(keys, top.column("key"))))
    for key, step, ts, value, nan in zip(
        *(pc.filter(batch.column(name), at_top).to_pylist() for name in ("key", "step", "timestamp", "value", "is_nan"))
    ):
        point = (step, ts, value, nan)
        if key not in latest or point > latest[key]:
            latest[key] = point
