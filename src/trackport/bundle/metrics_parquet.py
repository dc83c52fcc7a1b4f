"""Metric histories as Parquet: one file per run, long format, streamed both ways.

Columns: run_id and key (dictionary<int32, string>), step int64, timestamp int64 (ms),
value float64. Rows sorted by (key, step, timestamp, value) as the source delivers them
(domain.METRIC_SCHEMA order); NaN, +inf, -inf and repeated steps are stored as they are.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trackport.domain import METRIC_SCHEMA
from trackport.bundle.layout import FORMAT_VERSION

DEFAULT_ROW_GROUP_ROWS = 128 * 1024
READ_BATCH_ROWS = 64 * 1024

DICT_STRING = pa.dictionary(pa.int32(), pa.string())
PARQUET_SCHEMA = pa.schema(
    [
        pa.field("run_id", DICT_STRING, nullable=False),
        pa.field("key", DICT_STRING, nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ],
    metadata={
        b"trackport.format": b"trackport-bundle",
        b"trackport.format_version": FORMAT_VERSION.encode(),
        b"trackport.content": b"metric-history",
    },
)
SORTING = [pq.SortingColumn(i) for i in range(4)]  # run_id, key, step, timestamp


class _HashingFile:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        b = bytes(data)
        self.sha.update(b)
        self.size += len(b)
        return self._f.write(b)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        self.closed = True

    writable = staticmethod(lambda: True)
    readable = staticmethod(lambda: False)
    seekable = staticmethod(lambda: False)


def _to_parquet_batch(batch: pa.RecordBatch, run_id: str) -> pa.RecordBatch:
    if not batch.schema.equals(METRIC_SCHEMA, check_metadata=False):
        batch = batch.select(METRIC_SCHEMA.names).cast(METRIC_SCHEMA)
    n = batch.num_rows
    run_col = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([run_id], pa.string())
    )
    key_col = pc.dictionary_encode(batch.column("key")).cast(DICT_STRING)
    return pa.RecordBatch.from_arrays(
        [run_col, key_col, batch.column("step"), batch.column("timestamp"), batch.column("value")],
        schema=PARQUET_SCHEMA,
    )


def write_metrics(
    path: Path,
    run_id: str,
    batches: Iterable[pa.RecordBatch],
    *,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> tuple[int, str, int] | None:
    """Stream batches into a new Parquet file at path; returns (points, sha256, size), or
    None (and no file) when there is no point. Memory: at most ~row_group_rows rows."""
    writer: pq.ParquetWriter | None = None
    out = None
    hashing: _HashingFile | None = None
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    points = 0

    def flush(force: bool) -> None:
        nonlocal pending, pending_rows
        while pending_rows >= row_group_rows or (force and pending_rows):
            table = pa.Table.from_batches(pending, schema=PARQUET_SCHEMA)
            take = min(row_group_rows, pending_rows)
            writer.write_table(table.slice(0, take), row_group_size=row_group_rows)
            rest = table.slice(take)
            pending = rest.to_batches() if rest.num_rows else []
            pending_rows = rest.num_rows

    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if writer is None:
                out = open(path, "xb")
                hashing = _HashingFile(out)
                writer = pq.ParquetWriter(
                    hashing,
                    PARQUET_SCHEMA,
                    compression="zstd",
                    # Dictionaries only where values repeat; steps and timestamps grow by
                    # small deltas; float bytes split by position compress far better.
                    # 7.3 instead of 15.3 bytes per point (benchmarks/bundle_metrics_size.py).
                    use_dictionary=["run_id", "key"],
                    column_encoding={
                        "step": "DELTA_BINARY_PACKED",
                        "timestamp": "DELTA_BINARY_PACKED",
                        "value": "BYTE_STREAM_SPLIT",
                    },
                    write_statistics=True,
                    sorting_columns=SORTING,
                    write_page_index=True,
                )
            pb = _to_parquet_batch(batch, run_id)
            pending.append(pb)
            pending_rows += pb.num_rows
            points += pb.num_rows
            flush(False)
        if writer is None:
            return None
        flush(True)
        writer.close()
        writer = None
        out.flush()
        os.fsync(out.fileno())
        out.close()
        out = None
        return points, hashing.sha.hexdigest(), hashing.size
    finally:
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - already failing; the caller removes the file
                pass
        if out is not None:
            out.close()


class MetricsFileError(ValueError):
    """The Parquet file is readable but is not a metric history of this format/run."""


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


_COLUMN_TYPES = {
    "run_id": ("string", _is_string),
    "key": ("string", _is_string),
    "step": ("int64", pa.types.is_int64),
    "timestamp": ("int64", pa.types.is_int64),
    "value": ("float64", pa.types.is_float64),
}


def check_columns(schema: pa.Schema) -> None:
    """MetricsFileError unless the file has the five columns with usable types."""
    for name, (wanted, ok) in _COLUMN_TYPES.items():
        index = schema.get_field_index(name)
        if index < 0:
            raise MetricsFileError(f"has no column {name!r}")
        if not ok(schema.field(index).type):
            raise MetricsFileError(f"column {name!r} is {schema.field(index).type}, not {wanted}")


def read_metrics(
    path: Path,
    *,
    batch_rows: int = READ_BATCH_ROWS,
    run_id: str | None = None,
    expected_rows: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """The file's points as batches of domain.METRIC_SCHEMA, row group by row group.

    Checked as it streams (MetricsFileError): the column types; no nulls; with run_id,
    that every row belongs to that run; with expected_rows, the row count (against the
    footer before the first batch, and against what was read after the last).
    """
    pf = pq.ParquetFile(path)
    try:
        check_columns(pf.schema_arrow)
        if expected_rows is not None and pf.metadata.num_rows != expected_rows:
            raise MetricsFileError(f"holds {pf.metadata.num_rows} points but run.json says {expected_rows}")
        columns = ["key", "step", "timestamp", "value"] + (["run_id"] if run_id is not None else [])
        rows = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            for name in columns:
                if batch.column(name).null_count:
                    raise MetricsFileError(f"column {name!r} holds nulls")
            if run_id is not None:
                ids = batch.column("run_id").cast(pa.string())
                if not pc.all(pc.equal(ids, pa.scalar(run_id, pa.string()))).as_py():
                    other = pc.filter(ids, pc.not_equal(ids, pa.scalar(run_id, pa.string())))[0].as_py()
                    raise MetricsFileError(f"holds points of run {other[:100]!r}, not only of run {run_id!r}")
            rows += batch.num_rows
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("key").cast(pa.string()),
                    batch.column("step"),
                    batch.column("timestamp"),
                    batch.column("value"),
                ],
                schema=METRIC_SCHEMA,
            )
        if expected_rows is not None and rows != expected_rows:
            raise MetricsFileError(f"holds {rows} points but run.json says {expected_rows}")
    finally:
        pf.close()


__all__ = [
    "PARQUET_SCHEMA",
    "DEFAULT_ROW_GROUP_ROWS",
    "MetricsFileError",
    "write_metrics",
    "read_metrics",
]
