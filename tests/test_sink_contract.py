"""The sink contract every store kind that can be written passes (a local sqlite store, a
bundle, a tracking server): what the engine relies on, asked of the sink directly.

- put_experiment is idempotent (the second call finds the first one's experiment);
- after put_run, find_run and lookup_run name the copy, and the copy reads back as written;
- a put_run that breaks off half-way leaves nothing a later find_run or lookup_run would
  take for a copy, and the same run is written whole on the next try;
- what the sink declares it cannot hold (planned losses) is what differs when read back.
A new sink kind is done when it passes.
"""
from __future__ import annotations

import contextlib
import io
import uuid

import pyarrow as pa
import pytest

from conftest import open_target

from trackport.domain import METRIC_SCHEMA, ArtifactFile, Experiment, Run
from trackport.errors import UnitError
from trackport.opening import open_source
from trackport.stores.base import Selection, StoreDescription
from trackport.transfer.plan import planned_losses

T0 = 1_700_000_000_000


class Content:
    """A run's metrics and artifacts, optionally breaking off after the first batch."""

    def __init__(self, break_off: bool = False) -> None:
        self.break_off = break_off

    def metric_batches(self):
        yield pa.RecordBatch.from_arrays(
            [pa.array(["loss"] * 3), pa.array([0, 1, 2], pa.int64()), pa.array([T0] * 3, pa.int64()),
             pa.array([0.5, float("nan"), float("inf")])],
            schema=METRIC_SCHEMA,
        )
        if self.break_off:
            raise UnitError("the source broke off")

    def artifact_files(self):
        return iter([ArtifactFile("dir/file.txt", 5)])

    def open_artifact(self, path):
        return contextlib.nullcontext(io.BytesIO(b"hello"))


def _run(experiment_id: str, name: str) -> Run:
    return Run(uuid.uuid4().hex, experiment_id, name, "tester", "FINISHED", T0, T0 + 1000,
               params={"p": "1"}, tags={"mlflow.runName": name})


def test_the_sink_contract(sink_uri):
    name = f"contract-{uuid.uuid4().hex[:8]}"
    experiment = Experiment("17", name, creation_time=T0, last_update_time=T0)
    with open_target(sink_uri) as sink:
        sink.begin(StoreDescription("memory", "memory:contract"), Selection())
        first = sink.put_experiment(experiment)
        again = sink.put_experiment(experiment)
        assert first.created and not again.created
        assert again.target_experiment_id == first.target_experiment_id
        target = first.target_experiment_id

        broken = _run(experiment.experiment_id, "broken")
        with pytest.raises(UnitError, match="broke off"):
            sink.put_run(broken, target, Content(break_off=True))
        assert sink.find_run(broken, target) is None
        assert sink.lookup_run(broken.run_id, target) is None
        whole = sink.put_run(broken, target, Content())
        assert sink.find_run(broken, target) == whole.target_run_id
        assert sink.lookup_run(broken.run_id, target) == whole.target_run_id
        assert (whole.metric_points, whole.artifact_files, whole.artifact_bytes) == (3, 1, 5)
        sink.finish({})
        losses = planned_losses(sink.capabilities, sink.on_long_value)
        keeps_ids = sink.capabilities.keeps_run_ids

    with open_source(sink_uri) as back:
        [copy_experiment] = [e for e in back.list_experiments(Selection(experiments=(f"name:{name}",)))]
        runs = list(back.iter_runs(copy_experiment, Selection()))
        assert [r.run_name for r in runs] == ["broken"]  # one copy: the broken try left nothing
        copy = runs[0]
        assert (copy.run_id == broken.run_id) == keeps_ids
        assert any(loss.startswith("run ids") for loss in losses) == (not keeps_ids)
        assert copy.params == broken.params
        table = pa.Table.from_batches(list(back.iter_metric_batches(copy)), schema=METRIC_SCHEMA)
        assert table.column("step").to_pylist() == [0, 1, 2]
        with back.open_artifact(copy, "dir/file.txt") as f:
            assert f.read() == b"hello"
