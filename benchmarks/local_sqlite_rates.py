"""Rates of the local sqlite store: metric read (source), metric write (sink), full export.

    python benchmarks/local_sqlite_rates.py [points] [keys]

Builds one run of `points` metric points (default 1M = 10 keys x 100k steps) in a fresh
sqlite store with trackport's own sink from a synthetic source, then times
  1. the source's metric read of that run (iter_metric_batches),
  2. the sink's write of that run into another fresh store (put_run, from the first store),
  3. a whole `trackport export` of the first store into a bundle (the CLI, in-process).
Not a test: figures depend on the machine. Needs trackport[local] (MLflow) for the sink.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

from trackport.domain import METRIC_SCHEMA, Experiment, Run  # noqa: E402
from trackport.opening import open_sink, open_source  # noqa: E402
from trackport.stores.base import Selection  # noqa: E402

RUN_ID = "0123456789abcdef0123456789abcdef"


class _Content:
    def __init__(self, batches):
        self._batches = batches

    def metric_batches(self):
        return iter(self._batches())

    def artifact_files(self):
        return iter(())

    def open_artifact(self, path):
        raise FileNotFoundError(path)


def synthetic(points: int, keys: int):
    per_key = points // keys
    rng = np.random.default_rng(0)
    steps = np.arange(per_key, dtype=np.int64)
    stamps = 1_700_000_000_000 + np.cumsum(rng.integers(50, 150, per_key))
    for k in range(keys):
        values = np.exp(-steps / per_key) + rng.normal(0, 0.01, per_key)
        for s in range(0, per_key, 65_536):
            sl = slice(s, s + 65_536)
            n = len(steps[sl])
            yield pa.RecordBatch.from_arrays(
                [pa.array([f"train/metric_{k:02d}"] * n), pa.array(steps[sl]), pa.array(stamps[sl]), pa.array(values[sl])],
                schema=METRIC_SCHEMA,
            )


def _run(exp_id: str) -> Run:
    return Run(run_id=RUN_ID, experiment_id=exp_id, run_name="bench", user_id="bench",
               status="FINISHED", start_time=1, end_time=2)


def main(points: int, keys: int) -> None:
    with tempfile.TemporaryDirectory(prefix="trackport-bench-") as tmp:
        tmp = Path(tmp)
        src_uri = f"sqlite:///{tmp / 'src' / 'mlflow.db'}"
        sink = open_sink(src_uri)
        exp_id = sink.put_experiment(Experiment(experiment_id="1", name="bench", creation_time=1)).target_experiment_id
        t0 = time.perf_counter()
        result = sink.put_run(_run(exp_id), exp_id, _Content(lambda: synthetic(points, keys)))
        build = time.perf_counter() - t0
        sink.close()
        assert result.metric_points == points, result
        print(f"built {points:,} points ({keys} keys) with the sink from Arrow: {build:.2f} s = {points / build:,.0f} points/s")

        source = open_source(src_uri)
        exp = next(e for e in source.list_experiments(Selection()) if e.name == "bench")
        run = next(iter(source.iter_runs(exp, Selection())))
        t0, c0 = time.perf_counter(), time.process_time()
        read = sum(b.num_rows for b in source.iter_metric_batches(run))
        t_read, c_read = time.perf_counter() - t0, time.process_time() - c0
        assert read == points, read
        print(f"source read:   {t_read:.2f} s = {points / t_read:,.0f} points/s ({c_read:.2f} s CPU)")

        dst = open_sink(f"sqlite:///{tmp / 'dst' / 'mlflow.db'}")
        dst_exp = dst.put_experiment(exp).target_experiment_id
        t0, c0 = time.perf_counter(), time.process_time()
        result = dst.put_run(run, dst_exp, _Content(lambda: source.iter_metric_batches(run)))
        t_write, c_write = time.perf_counter() - t0, time.process_time() - c0
        dst.close()
        assert result.metric_points == points, result
        print(f"sink write:    {t_write:.2f} s = {points / t_write:,.0f} points/s ({c_write:.2f} s CPU; read from the source included)")
        source.close()

        from click.testing import CliRunner

        from trackport.cli.main import cli

        t0 = time.perf_counter()
        out = CliRunner().invoke(cli, ["export", src_uri, str(tmp / "bundle"), "--json"])
        t_export = time.perf_counter() - t0
        assert out.exit_code == 0, out.output
        print(f"export:        {t_export:.2f} s for {points:,} points = {points / t_export:,.0f} points/s (trackport export, in-process)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, int(sys.argv[2]) if len(sys.argv) > 2 else 10)
