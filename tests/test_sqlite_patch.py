"""A local sqlite store brings its runs up to date in place (trackport sync's RunPatcher):
every field of a RunPatch applied to a copy of the sample that trackport made, then read
back with MLflow's own client and with trackport's SqliteSource. The latest metrics are
checked against what MLflow itself makes of the same points logged through its client."""
from __future__ import annotations

import math
import shutil
import sqlite3
import sys
import threading
import time
from contextlib import closing, contextmanager
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow as pa
import pytest

pytest.importorskip("mlflow")

from mlflow.entities import Metric, ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from trackport.domain import METRIC_SCHEMA, RUN_NAME_TAG, ArtifactFile, DatasetInput  # noqa: E402
from trackport.errors import BadInputError, UnitError  # noqa: E402
from trackport.opening import open_source  # noqa: E402
from trackport.patching import RunPatch, RunPatcher  # noqa: E402
from trackport.samples.sample_store import BASE_TIME, EXPERIMENT_A, EXPERIMENT_B, PARENT_ARTIFACTS  # noqa: E402
from trackport.stores.base import Selection  # noqa: E402
from trackport.stores.sqlite.store import SqliteStore  # noqa: E402
from trackport.transfer import transfer  # noqa: E402

EVERYTHING = Selection(include_deleted=True)
NAN, INF = float("nan"), float("inf")

# Points appended to the parent run, (key, step, timestamp, value). The parent holds loss at
# steps 0-999 (latest 999), "train/acc" at steps 0-1 (latest 0.9 at step 1), "loss val"
# latest (2, +7, 0.2), "métrique précision" latest (3, +4, 0.5).
APPENDED = [
    ("loss", 1000, BASE_TIME + 20_000, 0.0005),
    ("loss", 1001, BASE_TIME + 20_010, 0.0004),
    ("train/acc", 0, BASE_TIME + 50_000, 0.99),  # a lower step than the latest: not the latest
    ("loss val", 2, BASE_TIME + 8, 0.1),  # same step, later time, lower value: the latest
    ("métrique précision", 9, BASE_TIME + 9, INF),
    ("new/metric", 4, BASE_TIME + 40, 1.5),
    ("new/metric", 5, BASE_TIME + 41, NAN),  # the latest point is NaN
]
NEW_FILES = {
    "new/added.txt": b"added by sync\n",
    "empty.txt": b"not empty any more",  # overwrites a file of the run
    "data/blob.bin": bytes(range(200)),  # overwrites a file of the run with a shorter one
}
WINE = DatasetInput(name="wine", digest="d1g", source_type="local", source='{"uri": "/data/wine.csv"}',
                    schema=None, profile='{"num_rows": 178}', tags={"mlflow.data.context": "eval"})
IRIS = DatasetInput(name="iris", digest="abc123", source_type="local", source='{"uri": "/data/iris.csv"}')


class Files:
    """The RunContent a sync hands the sink: the source run's files, by path."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.opened: list[str] = []

    def metric_batches(self) -> Iterator[pa.RecordBatch]:
        raise AssertionError("a patch takes its points from the patch, not from the content")

    def artifact_files(self) -> Iterator[ArtifactFile]:
        raise AssertionError("a patch names its files")

    @contextmanager
    def open_artifact(self, path: str) -> Iterator[BinaryIO]:
        self.opened.append(path)
        yield BytesIO(self.files[path])


def batches(points: list[tuple[str, int, int, float]]):
    def make() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(points), 3):  # several batches
            chunk = points[start : start + 3]
            yield pa.RecordBatch.from_pylist(
                [{"key": k, "step": s, "timestamp": t, "value": v} for k, s, t, v in chunk], schema=METRIC_SCHEMA
            )
    return make


@pytest.fixture
def store_uri(sample_sqlite, tmp_path) -> str:
    """A copy of the sample made by trackport, its artifacts in tmp_path."""
    uri = f"sqlite:///{tmp_path / 'target.db'}"
    with open_source(sample_sqlite) as source, SqliteStore(
        uri, create=True, artifact_root=str(tmp_path / "artifacts")
    ) as sink:
        summary = transfer(source, sink, EVERYTHING)
    assert summary.failed == 0, summary.failures
    return uri


def run_ids(uri: str) -> dict[str, str]:
    client = MlflowClient(tracking_uri=uri)
    exps = [client.get_experiment_by_name(n).experiment_id for n in (EXPERIMENT_A, EXPERIMENT_B)]
    return {r.info.run_name: r.info.run_id for r in client.search_runs(exps, run_view_type=ViewType.ALL)}


def source_run(uri: str, run_id: str):
    """The run as trackport's SqliteSource reads it, with its metric history."""
    with open_source(uri) as source:
        for exp in source.list_experiments(EVERYTHING):
            for run in source.iter_runs(exp, EVERYTHING):
                if run.run_id == run_id:
                    history = pa.Table.from_batches(list(source.iter_metric_batches(run)), schema=METRIC_SCHEMA)
                    return run, history.to_pylist()
    raise AssertionError(f"no run {run_id}")


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_every_field_of_a_patch_reads_back_in_mlflow_and_trackport(store_uri, sample_sqlite, tmp_path):
    client = MlflowClient(tracking_uri=store_uri)
    parent = run_ids(store_uri)["parent run"]
    before = client.get_run(parent)
    histories_before = {k: client.get_metric_history(parent, k) for k in before.data.metrics}
    patch = RunPatch(
        run_name="parent, renamed", status="FAILED", end_time=BASE_TIME + 99_000,
        new_params={"new_p": "7"}, changed_params={"lr": "0.01"},
        set_tags={"stage": "prod", "fresh": "yes"}, delete_tags=("team",),
        metric_points=batches(APPENDED), inputs=(WINE, IRIS),
        artifacts=tuple(ArtifactFile(p, len(b)) for p, b in NEW_FILES.items()),
    )
    content = Files(NEW_FILES)
    with SqliteStore(store_uri, create=True) as sink:
        assert isinstance(sink, RunPatcher) and sink.target_reader() is sink
        result = sink.patch_run(parent, patch, content)
    assert (result.target_run_id, result.metric_points, result.losses) == (parent, len(APPENDED), [])
    assert (result.artifact_files, result.artifact_bytes) == (3, sum(map(len, NEW_FILES.values())))
    assert sorted(content.opened) == sorted(NEW_FILES)

    after = client.get_run(parent)
    assert (after.info.run_name, after.info.status, after.info.end_time) == ("parent, renamed", "FAILED", BASE_TIME + 99_000)
    assert after.info.lifecycle_stage == "active" and after.info.start_time == before.info.start_time
    assert after.data.params == {**before.data.params, "new_p": "7", "lr": "0.01"}
    expected_tags = {**before.data.tags, "stage": "prod", "fresh": "yes", RUN_NAME_TAG: "parent, renamed"}
    del expected_tags["team"]
    assert after.data.tags == expected_tags
    # Latest metrics by MLflow's rule, and every history the old one plus the appended points.
    latest = after.data.metrics
    assert latest["loss"] == 0.0004 and latest["train/acc"] == 0.9 and latest["loss val"] == 0.1
    assert latest["métrique précision"] == INF and math.isnan(latest["new/metric"])
    for key in (*before.data.metrics, "new/metric"):
        history = {(m.step, m.timestamp, m.value if not math.isnan(m.value) else "nan")
                   for m in client.get_metric_history(parent, key)}
        old = {(m.step, m.timestamp, m.value if not math.isnan(m.value) else "nan") for m in histories_before.get(key, [])}
        new = {(s, t, v if not math.isnan(v) else "nan") for k, s, t, v in APPENDED if k == key}
        assert history == old | new and len(history) == len(old) + len(new), key
    # Inputs: the new dataset linked once, with its tags; iris (already linked) not twice.
    inputs = sorted((d.dataset.name, d.dataset.digest, d.dataset.profile, {t.key: t.value for t in d.tags}.get(
        "mlflow.data.context")) for d in after.inputs.dataset_inputs)
    assert inputs == [("iris", "abc123", '{"num_rows": 150}', "training"), ("wine", "d1g", '{"num_rows": 178}', "eval")]
    # Artifacts: new and overwritten files, the others as they were, no temporary file left.
    listed = {f.path for f in client.list_artifacts(parent, "new")} | {f.path for f in client.list_artifacts(parent)}
    assert {"new/added.txt", "empty.txt", "MLmodel", "data"} <= listed
    got = Path(client.download_artifacts(parent, "", str(tmp_path / "download")))
    files = {p.relative_to(got).as_posix(): p.read_bytes() for p in got.rglob("*") if p.is_file()}
    expected_files = {**PARENT_ARTIFACTS, **NEW_FILES}
    assert set(files) == set(expected_files)
    assert all(files[p] == expected_files[p] for p in expected_files if p != "MLmodel")
    run_folder = Path(after.info.artifact_uri.removeprefix("file://")).parent
    assert sorted(p.name for p in run_folder.iterdir()) == ["artifacts"]
    # MLflow's search finds the run by its new param, tag and metrics.
    exp = client.get_experiment_by_name(EXPERIMENT_A).experiment_id
    found = client.search_runs(
        [exp], "params.new_p = '7' and params.lr = '0.01' and tags.fresh = 'yes' and metrics.loss < 0.00045 "
        "and metrics.`train/acc` = 0.9 and attributes.status = 'FAILED'"
    )
    assert [r.info.run_id for r in found] == [parent]
    assert client.search_runs([exp], "tags.team = 'vision'") == []

    # trackport's own reading: the same run, and the exact histories (NaN and inf as logged).
    run, history = source_run(store_uri, parent)
    assert (run.run_name, run.status, run.end_time, run.params["lr"], run.params["new_p"]) == (
        "parent, renamed", "FAILED", BASE_TIME + 99_000, "0.01", "7")
    assert "team" not in run.tags and run.tags["fresh"] == "yes"
    assert sorted(d.name for d in run.inputs) == ["iris", "wine"]
    new_metric = [(p["step"], p["value"]) for p in history if p["key"] == "new/metric"]
    assert new_metric[0] == (4, 1.5) and new_metric[1][0] == 5 and math.isnan(new_metric[1][1])
    assert len(history) == sum(len(h) for h in histories_before.values()) + len(APPENDED)
    with open_source(store_uri) as source:
        assert {f.path: f.size for f in source.list_artifacts(run) if f.path in NEW_FILES} == {
            p: len(b) for p, b in NEW_FILES.items()}

    # The latest metrics are what MLflow itself makes of the same points logged into a copy
    # of the sample (the fixture's own file is copied first; only rows are written there).
    reference = tmp_path / "reference.db"
    shutil.copyfile(sample_sqlite.removeprefix("sqlite:///"), reference)
    mlflow_client = MlflowClient(tracking_uri=f"sqlite:///{reference}")
    mlflow_client.log_batch(parent, metrics=[Metric(k, v, t, s) for k, s, t, v in APPENDED])
    # MLflow's client logs inf as the largest float; the store keeps what it is given (a
    # real infinity, as put_run does), so only that point differs.
    mlflow_latest = {k: INF if v == sys.float_info.max else v for k, v in mlflow_client.get_run(parent).data.metrics.items()}
    assert set(mlflow_latest) == set(latest)
    assert all(same(mlflow_latest[k], latest[k]) for k in latest), (mlflow_latest, latest)
    appended_inf = ("métrique précision", INF, BASE_TIME + 9, 9, 0)
    with closing(sqlite3.connect(reference)) as ref, closing(sqlite3.connect(store_uri.removeprefix("sqlite:///"))) as ours:
        for sql in ("SELECT key, value, timestamp, step, is_nan FROM latest_metrics WHERE run_uuid = ?",
                    "SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid = ?"):
            theirs = [appended_inf if r == appended_inf[:1] + (sys.float_info.max,) + appended_inf[2:] else r
                      for r in ref.execute(sql, (parent,))]
            assert sorted(ours.execute(sql, (parent,))) == sorted(theirs)
            assert appended_inf in theirs


def test_delete_keeps_its_time_and_restore_brings_the_run_back(store_uri):
    client = MlflowClient(tracking_uri=store_uri)
    ids = run_ids(store_uri)
    child, deleted = ids["child"], ids["deleted run"]
    exp = client.get_experiment_by_name(EXPERIMENT_A).experiment_id
    with SqliteStore(store_uri, create=True) as sink:
        # Tags are set before the run is deleted, in one patch; the source's deletion time kept.
        sink.patch_run(child, RunPatch(set_tags={"gone": "soon"}, lifecycle_stage="deleted",
                                       deleted_time=BASE_TIME + 123), Files({}))
        # A deleted run restored, then changed (restore comes first).
        sink.patch_run(deleted, RunPatch(lifecycle_stage="active", status="KILLED", new_params={"back": "1"}), Files({}))
    assert client.get_run(child).info.lifecycle_stage == "deleted"
    assert client.get_run(child).data.tags["gone"] == "soon"
    restored = client.get_run(deleted)
    assert (restored.info.lifecycle_stage, restored.info.status, restored.data.params) == ("active", "KILLED", {"back": "1"})
    assert [r.info.run_id for r in client.search_runs([exp], run_view_type=ViewType.DELETED_ONLY)] == [child]
    assert child not in {r.info.run_id for r in client.search_runs([exp])}
    assert source_run(store_uri, child)[0].deleted_time == BASE_TIME + 123
    assert source_run(store_uri, deleted)[0].deleted_time is None

    # Without the source's time: now. Restoring it again clears the time.
    start = int(time.time() * 1000)
    with SqliteStore(store_uri, create=True) as sink:
        sink.patch_run(deleted, RunPatch(lifecycle_stage="deleted"), Files({}))
    run = source_run(store_uri, deleted)[0]
    assert run.lifecycle_stage == "deleted" and start <= run.deleted_time <= int(time.time() * 1000)
    with SqliteStore(store_uri, create=True) as sink:
        sink.patch_run(child, RunPatch(lifecycle_stage="active"), Files({}))
    run = source_run(store_uri, child)[0]
    assert (run.lifecycle_stage, run.deleted_time) == ("active", None)
    assert client.get_run(child).info.lifecycle_stage == "active"


def test_rename_experiment_and_its_refusal(store_uri):
    client = MlflowClient(tracking_uri=store_uri)
    exp = client.get_experiment_by_name(EXPERIMENT_A)
    with SqliteStore(store_uri, create=True) as sink:
        sink.rename_experiment(exp.experiment_id, "renamed by sync")
        with pytest.raises(UnitError) as taken:
            sink.rename_experiment(exp.experiment_id, EXPERIMENT_B)
        with pytest.raises(UnitError):
            sink.rename_experiment(exp.experiment_id, "")
        with pytest.raises(UnitError):
            sink.rename_experiment("98765", "nowhere")
        sink.rename_experiment(exp.experiment_id, "renamed by sync")  # its own name: nothing to do
    message = str(taken.value)
    assert "\n" not in message and EXPERIMENT_B in message and "has that name" in message
    renamed = client.get_experiment(exp.experiment_id)
    assert renamed.name == "renamed by sync" and renamed.last_update_time >= exp.last_update_time
    assert client.get_experiment_by_name(EXPERIMENT_A) is None
    assert client.get_experiment_by_name(EXPERIMENT_B).experiment_id != exp.experiment_id
    with open_source(store_uri) as source:
        assert "renamed by sync" in {e.name for e in source.list_experiments(EVERYTHING)}


def test_a_read_only_store_refuses_to_patch(store_uri):
    client = MlflowClient(tracking_uri=store_uri)
    parent = run_ids(store_uri)["parent run"]
    exp = client.get_experiment_by_name(EXPERIMENT_A).experiment_id
    with SqliteStore(store_uri, create=False) as store:
        assert store.target_reader() is store
        with pytest.raises(BadInputError, match="read-only"):
            store.patch_run(parent, RunPatch(run_name="nope", metric_points=batches(APPENDED)), Files({}))
        with pytest.raises(BadInputError, match="read-only"):
            store.rename_experiment(exp, "nope")
    assert client.get_run(parent).info.run_name == "parent run"
    assert client.get_experiment(exp).name == EXPERIMENT_A


def test_a_patch_of_a_missing_run_or_a_bad_path_changes_nothing(store_uri):
    client = MlflowClient(tracking_uri=store_uri)
    parent = run_ids(store_uri)["parent run"]
    with SqliteStore(store_uri, create=True) as sink:
        with pytest.raises(UnitError, match="not in"):
            sink.patch_run("0" * 32, RunPatch(run_name="x"), Files({}))
        with pytest.raises(UnitError, match="refused|escapes"):
            sink.patch_run(parent, RunPatch(run_name="x", artifacts=(ArtifactFile("../out.txt", 1),)),
                           Files({"../out.txt": b"x"}))
        # A duplicate of a point the run holds is collapsed, as MLflow's SQL store does: a loss.
        result = sink.patch_run(parent, RunPatch(metric_points=batches([("train/acc", 1, BASE_TIME + 1, 0.9)])),
                                Files({}))
    assert result.metric_points == 0 and len(result.losses) == 1 and "1 exact duplicate" in result.losses[0]
    assert client.get_run(parent).info.run_name == "parent run"
    assert len(client.get_metric_history(parent, "train/acc")) == 2


def test_files_for_a_run_that_had_none_and_a_killed_patch_s_leftovers(store_uri, tmp_path):
    client = MlflowClient(tracking_uri=store_uri)
    ids = run_ids(store_uri)
    grandchild, child = ids["grandchild"], ids["child"]  # no files; one file (report.json)
    assert client.list_artifacts(grandchild) == []
    child_folder = Path(client.get_run(child).info.artifact_uri.removeprefix("file://")).parent
    leftover = child_folder / ".artifact-file.tmp-0123456789ab"  # as a killed patch leaves it
    leftover.write_bytes(b"half")
    with SqliteStore(store_uri, create=True) as sink:
        made = sink.patch_run(grandchild, RunPatch(artifacts=(ArtifactFile("plots/a b.txt", 3),)),
                              Files({"plots/a b.txt": b"abc"}))
        changed = sink.patch_run(child, RunPatch(artifacts=(ArtifactFile("report.json", 2),)),
                                 Files({"report.json": b"{}"}))
    assert (made.artifact_files, made.artifact_bytes, changed.artifact_bytes) == (1, 3, 2)
    assert [f.path for f in client.list_artifacts(grandchild, "plots")] == ["plots/a b.txt"]
    got = Path(client.download_artifacts(grandchild, "plots/a b.txt", str(tmp_path / "g")))
    assert got.read_bytes() == b"abc"
    assert Path(client.download_artifacts(child, "report.json", str(tmp_path / "c"))).read_bytes() == b"{}"
    assert sorted(p.name for p in child_folder.iterdir()) == ["artifacts"]


def test_a_store_reads_its_metrics_while_this_process_holds_a_write_open(store_uri):
    """A sync reads target runs while its group commit writes. ADBC's own copy of SQLite
    cannot see this process's lock (POSIX locks are per process) and took the writer's
    journal for a hot one: "attempt to write a readonly database". The read must wait for
    the write instead."""
    with SqliteStore(store_uri, create=True) as sink:
        parent = next(r for e in sink.list_experiments(EVERYTHING) for r in sink.iter_runs(e, EVERYTHING)
                      if sum(b.num_rows for b in sink.iter_metric_batches(r)))
        expected = sum(b.num_rows for b in sink.iter_metric_batches(parent))
        with closing(sqlite3.connect(sink.path, isolation_level=None)) as writer:
            writer.execute("PRAGMA cache_size = 1")  # pages spill: the journal is written out
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("CREATE TABLE filler (x)")
            writer.executemany("INSERT INTO filler VALUES (?)", ((i,) for i in range(5000)))
            read: list[int | BaseException] = []

            def reader() -> None:
                try:
                    read.append(sum(b.num_rows for b in sink.iter_metric_batches(parent)))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    read.append(exc)

            thread = threading.Thread(target=reader)
            thread.start()
            time.sleep(0.5)
            writer.execute("ROLLBACK")
            thread.join(30)
        assert read == [expected]
