"""Metric rows of MLflow's `metrics` table as ordered METRIC_SCHEMA batches.

The table stores a NaN as 0 with is_nan set; the batches here carry NaN again.
"""
from __future__ import annotations

import math
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from trackport.domain import METRIC_SCHEMA, rebatch
from trackport.stores._history import FULL_ORDER


def rows_to_batch(rows: list, key: str | None = None) -> pa.RecordBatch:
    """DB rows (key, step, timestamp, value, is_nan), or (step, ...) with key given, as a
    METRIC_SCHEMA batch with NaN restored from is_nan."""
    cols = list(zip(*rows))
    if key is not None:
        cols.insert(0, [key] * len(rows))
    keys, steps, stamps, values, nans = cols
    return to_batch(
        pa.array(keys, pa.string()), pa.array(steps, pa.int64()), pa.array(stamps, pa.int64()),
        pa.array(values, pa.float64()), pa.array(nans),
    )


def to_batch(keys: pa.Array, steps: pa.Array, stamps: pa.Array, values: pa.Array, nans: pa.Array) -> pa.RecordBatch:
    if nans.type != pa.bool_():
        nans = nans.cast(pa.bool_())
    if values.type != pa.float64():
        values = values.cast(pa.float64())
    if pc.any(nans).as_py():
        values = pc.if_else(nans, pa.scalar(math.nan, pa.float64()), values)
    return pa.RecordBatch.from_arrays(
        [keys.cast(pa.string()), steps.cast(pa.int64()), stamps.cast(pa.int64()), values], schema=METRIC_SCHEMA
    )


def ordered(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of (key, step, timestamp, value, is_nan) that arrive ordered by (key, step)
    only, as METRIC_SCHEMA batches ordered by (key, step, timestamp, value).

    Ordering by (key, step) is what MLflow's index on (run_uuid, key, step) gives for free;
    the rare points that share a step are put in order here, by the stored value (a NaN
    is stored as 0) as MLflow's ORDER BY would. The last (key, step) group of each batch
    is held back until the next batch, which may continue it. Output comes in batches of
    `rows` rows (rebatch), as the REST source yields them, so both give byte-identical
    bundles for runs of up to that many points."""
    for batch in rebatch(_in_order(batches), rows):
        yield to_batch(*(batch.column(i) for i in range(5)))


def _in_order(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    pending: pa.Table | None = None
    for batch in batches:
        if not batch.num_rows:
            continue
        table = pa.Table.from_batches([batch])
        if pending is not None:
            table = pa.concat_tables([pending, table])
        keys, steps = table.column("key"), table.column("step")
        last_key, last_step = keys[-1], steps[-1]
        tail = pc.and_(pc.equal(keys, last_key), pc.equal(steps, last_step))
        cut = pc.index(tail, True).as_py()
        pending = table.slice(cut)
        if cut:
            yield _sorted(table.slice(0, cut))
    if pending is not None and pending.num_rows:
        yield _sorted(pending)


def _sorted(table: pa.Table) -> pa.Table:
    table = table.combine_chunks()
    n = table.num_rows
    if n > 1:
        k, s = table.column("key"), table.column("step")
        same = pc.and_(pc.equal(k.slice(1), k.slice(0, n - 1)), pc.equal(s.slice(1), s.slice(0, n - 1)))
        if pc.any(same).as_py():
            table = table.sort_by(FULL_ORDER)
    return table
