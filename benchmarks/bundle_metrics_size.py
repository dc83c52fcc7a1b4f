"""Bytes per metric point: bundle Parquet vs JSON text (mlflow-export-import style).

    PYTHONPATH=src python benchmarks/bundle_metrics_size.py [points]
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from trackport.bundle.metrics_parquet import read_metrics, write_metrics
from trackport.domain import METRIC_SCHEMA


def history(n: int, keys: int = 10, smooth: bool = True):
    per_key = n // keys
    rng = np.random.default_rng(0)
    steps = np.arange(per_key, dtype=np.int64)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(50, 150, per_key))
    for k in range(keys):
        values = np.exp(-steps / per_key) + rng.normal(0, 0.01, per_key) if smooth else rng.random(per_key)
        for s in range(0, per_key, 100_000):
            sl = slice(s, s + 100_000)
            yield pa.RecordBatch.from_arrays(
                [pa.array([f"train/metric_{k}"] * len(steps[sl])), pa.array(steps[sl]), pa.array(ts[sl]), pa.array(values[sl])],
                schema=METRIC_SCHEMA,
            )


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.parquet"
        t0 = time.perf_counter()
        points, _, size = write_metrics(p, "0123456789abcdef0123456789abcdef", history(n))
        t1 = time.perf_counter()
        read = sum(b.num_rows for b in read_metrics(p))
        t2 = time.perf_counter()
        assert read == points == n
        json_bytes = 0
        for b in history(n):
            for key, step, ts, value in zip(*(b.column(i).to_pylist() for i in range(4))):
                json_bytes += len(json.dumps({"key": key, "step": step, "timestamp": ts, "value": value})) + 2
        print(f"{n} points: parquet {size} B = {size / n:.2f} B/point "
              f"(write {n / (t1 - t0) / 1e6:.1f} M pts/s, read {n / (t2 - t1) / 1e6:.1f} M pts/s); "
              f"JSON text {json_bytes} B = {json_bytes / n:.1f} B/point; ratio {json_bytes / size:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
