"""One key's metric history as the sources build it, and a run's histories as batches.

Every source yields a run's points sorted by (key, step, timestamp, value), cut into
batches of config.metric_batch_rows rows (SourceStore.iter_metric_batches). The sources
that read one key at a time (an mlruns metric file, a paged REST call per key) build each
key's table and cut the run's histories here, so they do it the same way; the database
sources let the database order the points and cut them with the same domain.rebatch.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import pyarrow as pa

from trackport.domain import METRIC_SCHEMA, rebatch

# The order of one key's points; MLflow's SQL store reads them in this order too.
HISTORY_ORDER = [("step", "ascending"), ("timestamp", "ascending"), ("value", "ascending")]
FULL_ORDER = [("key", "ascending"), *HISTORY_ORDER]


def key_history(key: str, steps: list[int], timestamps: list[int], values: list[float]) -> pa.Table:
    """One key's points as a METRIC_SCHEMA table in HISTORY_ORDER (a stable sort: points
    equal in all three keep the order they came in)."""
    n = len(steps)
    table = pa.Table.from_arrays(
        [
            pa.array([key] * n, pa.string()),
            pa.array(steps, pa.int64()),
            pa.array(timestamps, pa.int64()),
            pa.array(values, pa.float64()),
        ],
        schema=METRIC_SCHEMA,
    )
    return table.sort_by(HISTORY_ORDER) if n > 1 else table


def history_batches(keys: Iterable[str], history: Callable[[str], pa.Table], rows: int) -> Iterator[pa.RecordBatch]:
    """The histories of keys (given sorted), read one key at a time when the batches are
    asked for, as batches of up to rows rows."""
    return rebatch((history(key) for key in keys), rows)
