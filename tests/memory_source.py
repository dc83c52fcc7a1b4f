"""The in-memory source store the tests use wherever they need data of a given shape
cheaply: experiments, their runs, each run's metric points and artifact files, held in
memory. It reads its selection through trackport.selection, like every source, so it
passes the source contract; a bundle written from it is then the source of truth.

    MemorySource([experiment], [run, ...], metrics={run_id: rows}, artifacts={run_id: {path: bytes}})
    MemorySource.workload(runs=100, artifact_bytes=1_000, points=10)   # one experiment, generated
"""
from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa

from trackport.domain import METRIC_SCHEMA, ArtifactFile, Experiment, Run
from trackport.opening import open_bundle_sink
from trackport.selection import resolve_experiments, run_order, select_runs
from trackport.stores.base import Selection, SourceStore, StoreDescription
from trackport.transfer import transfer

BASE_TIME = 1_700_000_000_000
Row = tuple  # (key, step, timestamp, value)


def metric_batch(rows: Iterable[Row]) -> pa.RecordBatch:
    """Metric rows as one batch of METRIC_SCHEMA, in the order sources promise."""
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3]))
    return pa.RecordBatch.from_arrays(
        [pa.array([r[i] for r in rows], f.type) for i, f in enumerate(METRIC_SCHEMA)], schema=METRIC_SCHEMA
    )


class MemorySource(SourceStore):
    def __init__(
        self,
        experiments: list[Experiment],
        runs: list[Run],
        metrics: dict[str, list[Row] | pa.RecordBatch] | None = None,
        artifacts: dict[str, dict[str, bytes]] | None = None,
        *,
        uri: str = "memory:test",
        open_bytes: Callable[[bytes], io.RawIOBase] = io.BytesIO,
    ) -> None:
        self.experiments = experiments
        self.runs = runs
        self.metrics = {
            run_id: rows if isinstance(rows, pa.RecordBatch) else metric_batch(rows) for run_id, rows in (metrics or {}).items()
        }
        self.artifacts = artifacts or {}
        self.uri = uri
        self._open_bytes = open_bytes  # e.g. a stream that cannot seek, like an HTTP body

    @classmethod
    def workload(
        cls, *, runs: int, artifact_bytes: int, points: int = 10, seed: int = 7, name: str = "memory"
    ) -> MemorySource:
        """One experiment ("1") of `runs` finished runs, each with `points` points of one
        metric, a random blob of artifact_bytes and a small text file."""
        rng = random.Random(seed)
        experiment = Experiment("1", name, creation_time=BASE_TIME, last_update_time=BASE_TIME)
        made, artifacts = [], {}
        for i in range(runs):
            run_id = f"{rng.getrandbits(128):032x}"
            made.append(Run(run_id, "1", f"run {i}", "tester", "FINISHED", BASE_TIME + i, BASE_TIME + 1000 + i,
                            params={"i": str(i)}, tags={"mlflow.runName": f"run {i}"}))
            artifacts[run_id] = {"blob.bin": rng.randbytes(artifact_bytes), "small.txt": f"run {i}\n".encode()}
        history = metric_batch(("loss", j, BASE_TIME + j, j / 2) for j in range(points))
        return cls([experiment], made, {r.run_id: history for r in made}, artifacts, uri=f"memory:{name}")

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="memory", uri=self.uri)

    def list_experiments(self, selection: Selection):
        def locate(run_ids: list[str]) -> dict[str, str]:
            return {r.run_id: r.experiment_id for r in self.runs if r.run_id in run_ids}

        return iter(resolve_experiments(selection, self.experiments, locate, self.uri))

    def iter_runs(self, experiment: Experiment, selection: Selection):
        mine = sorted((r for r in self.runs if r.experiment_id == experiment.experiment_id), key=run_order)
        return select_runs(mine, selection)

    def count_runs(self, experiment: Experiment, selection: Selection) -> int:
        return sum(1 for _ in self.iter_runs(experiment, selection))

    def iter_metric_batches(self, run: Run):
        batch = self.metrics.get(run.run_id)
        return iter([batch] if batch is not None and batch.num_rows else [])

    def list_artifacts(self, run: Run):
        files = self.artifacts.get(run.run_id, {})
        return iter(ArtifactFile(path, len(data)) for path, data in sorted(files.items()))

    def open_artifact(self, run: Run, path: str):
        return contextlib.nullcontext(self._open_bytes(self.artifacts[run.run_id][path]))


def memory_bundle(path: Path, **shape) -> Path:
    """A complete bundle of a MemorySource.workload of that shape."""
    with open_bundle_sink(str(path)) as sink:
        summary = transfer(MemorySource.workload(**shape), sink, Selection(include_deleted=True))
    assert summary.failed == 0, summary.failures
    return path
