"""An in-memory source store for tests that need a workload of a given shape (many runs,
large artifacts) cheaply. The bundle written from it is then the source of truth."""
from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import pyarrow as pa

from trackport.domain import METRIC_SCHEMA, ArtifactFile, Experiment, Run
from trackport.opening import open_bundle_sink
from trackport.stores.base import Selection, SourceStore, StoreDescription
from trackport.transfer import transfer

BASE_TIME = 1_700_000_000_000


class MemorySource(SourceStore):
    def __init__(self, *, runs: int, artifact_bytes: int, points: int = 10, seed: int = 7, name: str = "memory") -> None:
        rng = random.Random(seed)
        self.experiment = Experiment("1", name, creation_time=BASE_TIME, last_update_time=BASE_TIME)
        self.runs: list[Run] = []
        self.artifacts: dict[str, dict[str, bytes]] = {}
        for i in range(runs):
            run_id = f"{rng.getrandbits(128):032x}"
            self.runs.append(Run(run_id, "1", f"run {i}", "tester", "FINISHED", BASE_TIME + i, BASE_TIME + 1000 + i,
                                 params={"i": str(i)}, tags={"mlflow.runName": f"run {i}"}))
            self.artifacts[run_id] = {"blob.bin": rng.randbytes(artifact_bytes), "small.txt": f"run {i}\n".encode()}
        self.points = points

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="memory", uri=f"memory:{self.experiment.name}")

    def list_experiments(self, selection: Selection):
        return iter([self.experiment])

    def iter_runs(self, experiment: Experiment, selection: Selection):
        return iter(self.runs)

    def iter_metric_batches(self, run: Run):
        n = self.points
        yield pa.RecordBatch.from_arrays(
            [pa.array(["loss"] * n, pa.string()), pa.array(range(n), pa.int64()),
             pa.array([BASE_TIME + j for j in range(n)], pa.int64()), pa.array([j / 2 for j in range(n)], pa.float64())],
            schema=METRIC_SCHEMA,
        )

    def list_artifacts(self, run: Run):
        return iter(ArtifactFile(path, len(data)) for path, data in sorted(self.artifacts[run.run_id].items()))

    def open_artifact(self, run: Run, path: str):
        return contextlib.nullcontext(io.BytesIO(self.artifacts[run.run_id][path]))


def memory_bundle(path: Path, **shape) -> Path:
    """A complete bundle of a MemorySource of that shape."""
    with open_bundle_sink(str(path)) as sink:
        summary = transfer(MemorySource(**shape), sink, Selection(include_deleted=True))
    assert summary.failed == 0, summary.failures
    return path
