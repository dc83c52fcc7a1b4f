"""The REST sink against real MLflow servers, checked with MLflow's own client."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import uuid

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from memory_source import MemorySource
from mlflow_snapshot import snapshot
from trackport.domain import DatasetInput, Experiment, Run
from trackport.samples.sample_store import SAMPLE_COUNTS
from trackport.opening import open_source
from trackport.stores.base import Selection, SourceStore
from trackport.stores.rest.server import connect
from trackport.stores.rest.sink import RestSink
from trackport.transfer import transfer

MAX_DOUBLE = 1.7976931348623157e308
SOURCE_RUN_TAG = "trackport.source.run_id"


@contextlib.contextmanager
def rest_sink(url, tmp_path, **kwargs):
    client, info = connect(url, "target")
    sink = RestSink(client, url, info, state_root=tmp_path / "state", **kwargs)
    try:
        yield sink
    finally:
        sink.close()  # releases the target's lock and closes the client


class Renamed(SourceStore):
    """Another source with a prefix on every experiment name, so a shared server can hold
    several copies of the same sample."""

    def __init__(self, inner: SourceStore, prefix: str) -> None:
        self.inner, self.prefix, self._original = inner, prefix, {}

    def describe(self):
        return self.inner.describe()

    def list_experiments(self, selection):
        for exp in self.inner.list_experiments(selection):
            self._original[exp.experiment_id] = exp
            yield dataclasses.replace(exp, name=self.prefix + exp.name)

    def iter_runs(self, experiment, selection):
        return self.inner.iter_runs(self._original[experiment.experiment_id], selection)

    def iter_metric_batches(self, run):
        return self.inner.iter_metric_batches(run)

    def list_artifacts(self, run):
        return self.inner.list_artifacts(run)

    def open_artifact(self, run, path):
        return self.inner.open_artifact(run, path)


class _NonSeekable(io.RawIOBase):
    """Like an HTTP response body: read() only."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buffer):
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def TinySource(experiment: Experiment, runs: list[tuple[Run, list[tuple], dict[str, bytes]]]) -> MemorySource:
    """One experiment, runs given as (Run, metric rows, artifacts); artifacts read like an
    HTTP body (no seeking)."""
    return MemorySource(
        [experiment], [run for run, _, _ in runs], {run.run_id: rows for run, rows, _ in runs},
        {run.run_id: files for run, _, files in runs}, uri="tiny://test", open_bytes=_NonSeekable,
    )


def tiny_run(name: str, **kwargs) -> Run:
    fields = dict(
        run_id=uuid.uuid4().hex, experiment_id="7", run_name=name, user_id="tester", status="FINISHED",
        start_time=1_700_000_000_000, end_time=1_700_000_100_000,
    )
    fields.update(kwargs)
    fields.setdefault("tags", {})
    fields["tags"] = {"mlflow.runName": name, **fields["tags"]}
    return Run(**fields)


def copies(client: MlflowClient, experiment_id: str, source_run_id: str, view=ViewType.ALL):
    return client.search_runs(
        [experiment_id], f"tags.`{SOURCE_RUN_TAG}` = '{source_run_id}'", run_view_type=view
    )


def assert_faithful(source: dict, target: dict, prefix: str = "") -> None:
    """Every experiment and run of the source snapshot is in the target snapshot exactly
    once (found by its provenance tag), equal except for ids and provenance."""
    for name, exp in source.items():
        texp = target[prefix + name]
        assert texp["lifecycle_stage"] == exp["lifecycle_stage"], name
        assert exp["tags"].items() <= texp["tags"].items(), name
        by_source: dict[str, list] = {}
        for trid, trun in texp["runs"].items():
            by_source.setdefault(trun["tags"].get(SOURCE_RUN_TAG), []).append((trid, trun))
        id_map = {rid: [t for t, r in by_source.get(rid, []) if r["tags"].get("trackport.complete") == "true"]
                  for rid in exp["runs"]}
        for rid, run in exp["runs"].items():
            assert len(id_map[rid]) == 1, f"{name}/{run['run_name']}: {id_map[rid]}"
            trid = id_map[rid][0]
            trun = texp["runs"][trid]
            for field in ("run_name", "user_id", "status", "start_time", "end_time", "lifecycle_stage",
                          "params", "metrics", "inputs"):
                assert trun[field] == run[field], (run["run_name"], field)
            expected_tags = dict(run["tags"])
            if "mlflow.parentRunId" in expected_tags:
                expected_tags["mlflow.parentRunId"] = id_map[expected_tags["mlflow.parentRunId"]][0]
            if "mlflow.log-model.history" in expected_tags:
                history = expected_tags["mlflow.log-model.history"]
                assert rid in history
                expected_tags["mlflow.log-model.history"] = history.replace(rid, trid)
            provenance = {k: v for k, v in trun["tags"].items() if k.startswith("trackport.")}
            assert provenance[SOURCE_RUN_TAG] == rid
            assert provenance["trackport.source.experiment_id"] == exp["experiment_id"]
            assert {k: v for k, v in trun["tags"].items() if not k.startswith("trackport.")} == expected_tags
            assert trun["artifacts"].keys() == run["artifacts"].keys()
            for path, digest in run["artifacts"].items():
                if path == "MLmodel":
                    continue
                assert trun["artifacts"][path] == digest, path


def _mlmodel(client: MlflowClient, run_id: str, tmp_path) -> str:
    return open(client.download_artifacts(run_id, "MLmodel", str(tmp_path))).read()


# -- the sample, whole ---------------------------------------------------------------------


def test_sample_into_fresh_server(sample_sqlite, fresh_server, tmp_path):
    url = fresh_server.url
    target = MlflowClient(tracking_uri=url)
    source = MlflowClient(tracking_uri=sample_sqlite)
    src_runs = {
        r.info.run_name: r.info.run_id
        for e in source.search_experiments(view_type=ViewType.ALL)
        for r in source.search_runs([e.experiment_id], run_view_type=ViewType.ALL)
    }
    # An interrupted earlier transfer left a partial copy of "killed run".
    exp_b = target.create_experiment("trackport sample b")
    partial = target.create_run(exp_b, tags={SOURCE_RUN_TAG: src_runs["killed run"]}).info.run_id

    with rest_sink(url, tmp_path) as sink:
        summary = transfer(open_source(sample_sqlite), sink, Selection(include_deleted=True))
    assert summary.failed == 0, summary.failures
    for measure in ("runs", "metric_points", "artifact_files", "artifact_bytes"):
        assert summary.counts[measure]["done"] == SAMPLE_COUNTS[measure], measure

    expected, actual = snapshot(sample_sqlite), snapshot(url)
    assert_faithful(expected, actual)
    assert target.get_run(partial).info.lifecycle_stage == "deleted"
    killed = copies(target, exp_b, src_runs["killed run"], ViewType.ACTIVE_ONLY)
    assert len(killed) == 1 and killed[0].info.run_id != partial

    exp_a = target.get_experiment_by_name("trackport-sample-a").experiment_id
    [parent] = copies(target, exp_a, src_runs["parent run"])
    [child] = copies(target, exp_a, src_runs["child"])
    [grandchild] = copies(target, exp_a, src_runs["grandchild"])
    [deleted] = copies(target, exp_a, src_runs["deleted run"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert grandchild.data.tags["mlflow.parentRunId"] == child.info.run_id
    assert deleted.info.lifecycle_stage == "deleted"
    assert parent.info.run_id in parent.data.tags["mlflow.log-model.history"]
    assert src_runs["parent run"] not in parent.data.tags["mlflow.log-model.history"]
    mlmodel = _mlmodel(target, parent.info.run_id, tmp_path)
    assert f"run_id: {parent.info.run_id}\n" in mlmodel
    nan_points = [m.value for m in target.get_metric_history(parent.info.run_id, "métrique précision")]
    assert math.isnan(nan_points[0]) and MAX_DOUBLE in nan_points and -MAX_DOUBLE in nan_points
    assert len(target.get_metric_history(parent.info.run_id, "loss")) == 1000

    def all_runs():
        return {
            r.info.run_id: r.info.lifecycle_stage
            for e in target.search_experiments(view_type=ViewType.ALL)
            for r in target.search_runs([e.experiment_id], run_view_type=ViewType.ALL)
        }

    before = all_runs()
    # Again: everything is skipped, nothing is written.
    with rest_sink(url, tmp_path / "again") as sink:
        summary = transfer(open_source(sample_sqlite), sink, Selection(include_deleted=True))
    assert summary.failed == 0
    assert summary.counts["runs"] == {"done": 0, "skipped": SAMPLE_COUNTS["runs"], "failed": 0, "not_selected": 0}
    assert all_runs() == before

    # A partial copy beside a complete one is deleted; the complete one stays the only copy.
    partial2 = target.create_run(exp_a, tags={SOURCE_RUN_TAG: src_runs["child"]}).info.run_id
    with rest_sink(url, tmp_path) as sink:
        summary = transfer(open_source(sample_sqlite), sink, Selection(include_deleted=True))
    assert summary.counts["runs"]["skipped"] == SAMPLE_COUNTS["runs"]
    assert target.get_run(partial2).info.lifecycle_stage == "deleted"
    [active_child] = copies(target, exp_a, src_runs["child"], ViewType.ACTIVE_ONLY)
    assert active_child.info.run_id == child.info.run_id


def test_bundle_into_shared_server(sample_bundle, sample_sqlite, target_server, tmp_path):
    prefix = f"bundle-{uuid.uuid4().hex[:8]}-"
    with rest_sink(target_server.url, tmp_path) as sink:
        summary = transfer(Renamed(open_source(str(sample_bundle)), prefix), sink, Selection(include_deleted=True))
    assert summary.failed == 0, summary.failures
    assert summary.counts["runs"]["done"] == SAMPLE_COUNTS["runs"]
    expected = {k: v for k, v in snapshot(sample_sqlite).items() if k != "Default"}
    assert_faithful(expected, snapshot(target_server.url, prefix), prefix)


def test_through_basic_auth(auth_server, auth_env, tmp_path):
    # Every request to the basic-auth server costs ~0.4 s (password hashing): one small run.
    name = f"auth-{uuid.uuid4().hex[:8]}"
    run = tiny_run("authed", params={"p": "1"})
    source = TinySource(Experiment("7", name), [(run, [("m", 0, 5, 0.5)], {"a/b.txt": b"hello"})])
    with rest_sink(auth_server.url, tmp_path) as sink:
        summary = transfer(source, sink, Selection(include_deleted=True))
    assert summary.failed == 0, summary.failures
    client = MlflowClient(tracking_uri=auth_server.url)
    [copy] = copies(client, client.get_experiment_by_name(name).experiment_id, run.run_id)
    assert copy.data.params == {"p": "1"} and copy.data.metrics == {"m": 0.5}
    assert copy.data.tags["trackport.complete"] == "true"
    assert open(client.download_artifacts(copy.info.run_id, "a/b.txt", str(tmp_path))).read() == "hello"


# -- hand-written sources: limits, infinities, refusals -------------------------------------


def _tiny_source(name: str) -> tuple[TinySource, dict[str, Run]]:
    big = bytes(range(256)) * 6000  # 1.5 MB, streamed from a non-seekable source
    ok = tiny_run(
        "ok",
        params={"p": "1"},
        tags={"t": "v", "trackport.complete": "from an earlier hop"},
        inputs=(DatasetInput("ds", "d1", "local", '{"uri": "x"}', tags={"mlflow.data.context": "eval"}),),
    )
    unknown_start = tiny_run("no start", start_time=None, end_time=None, status="RUNNING")
    long = tiny_run("long", params={"short": "s", "big": "y" * 7000})
    bad = tiny_run("bad")
    points = [("m", i, 1000 + i, float(i)) for i in range(3000)]
    points += [("inf", 0, 1, math.inf), ("inf", 1, 2, -math.inf), ("inf", 2, 3, math.nan)]
    points += [("rep", 5, 10, 1.0), ("rep", 5, 11, 2.0), ("rep", 5, 11, 3.0)]
    source = TinySource(
        Experiment("7", name),
        [
            (ok, points, {"dir with space/ünï.bin": big, "empty": b""}),
            (unknown_start, [], {}),
            (long, [("x", 0, 0, 1.0)], {}),
            (bad, [("a@b", 0, 0, 1.0)], {}),
        ],
    )
    return source, {"ok": ok, "no start": unknown_start, "long": long, "bad": bad, "big": big}


def test_long_values_infinities_and_refused_runs(target_server, tmp_path):
    client = MlflowClient(tracking_uri=target_server.url)

    # on_long_value="error": the long run fails by name before anything of it is written.
    name = f"tiny-error-{uuid.uuid4().hex[:8]}"
    source, runs = _tiny_source(name)
    source.runs.remove(runs["bad"])
    with rest_sink(target_server.url, tmp_path, on_long_value="error") as sink:
        summary = transfer(source, sink, Selection(include_deleted=True))
    assert summary.failed == 1
    [failure] = summary.failures
    assert failure.name == "long" and "'big'" in failure.reason and "7000" in failure.reason
    exp_id = client.get_experiment_by_name(name).experiment_id
    assert copies(client, exp_id, runs["long"].run_id) == []

    [ok] = copies(client, exp_id, runs["ok"].run_id)
    assert ok.info.status == "FINISHED" and ok.info.user_id == "tester"
    assert (ok.info.start_time, ok.info.end_time) == (1_700_000_000_000, 1_700_000_100_000)
    assert ok.data.params == {"p": "1"}
    assert ok.data.tags["t"] == "v" and ok.data.tags["trackport.complete"] == "true"
    history = client.get_metric_history(ok.info.run_id, "m")
    assert sorted((m.step, m.timestamp, m.value) for m in history) == [(i, 1000 + i, float(i)) for i in range(3000)]
    inf = sorted(client.get_metric_history(ok.info.run_id, "inf"), key=lambda m: m.step)
    assert [m.value for m in inf[:2]] == [MAX_DOUBLE, -MAX_DOUBLE] and math.isnan(inf[2].value)
    assert sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(ok.info.run_id, "rep")) == [
        (5, 10, 1.0), (5, 11, 2.0), (5, 11, 3.0)
    ]
    losses = json.loads(ok.data.tags["trackport.losses"])
    assert "2 ±inf metric points stored as ±1.7976931348623157e308 by the target" in losses
    [dataset] = client.get_run(ok.info.run_id).inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest, dataset.tags[0].value) == ("ds", "d1", "eval")
    big = client.download_artifacts(ok.info.run_id, "dir with space/ünï.bin", str(tmp_path / "dl"))
    assert hashlib.sha256(open(big, "rb").read()).digest() == hashlib.sha256(runs["big"]).digest()
    empty = client.download_artifacts(ok.info.run_id, "empty", str(tmp_path / "dl"))
    assert open(empty, "rb").read() == b""
    [no_start] = copies(client, exp_id, runs["no start"].run_id)
    assert no_start.info.start_time == 0 and no_start.info.status == "RUNNING"
    assert any("start_time" in loss for loss in json.loads(no_start.data.tags["trackport.losses"]))

    # on_long_value="truncate": the long run arrives cut, with the loss; a run the server
    # refuses fails by name with the server's message and leaves nothing active.
    name = f"tiny-truncate-{uuid.uuid4().hex[:8]}"
    source, runs = _tiny_source(name)
    source.runs.remove(runs["ok"])
    with rest_sink(target_server.url, tmp_path, on_long_value="truncate") as sink:
        summary = transfer(source, sink, Selection(include_deleted=True))
    assert summary.failed == 1
    [failure] = summary.failures
    assert failure.name == "bad" and "a@b" in failure.reason and "INVALID_PARAMETER_VALUE" in failure.reason
    exp_id = client.get_experiment_by_name(name).experiment_id
    assert copies(client, exp_id, runs["bad"].run_id, ViewType.ACTIVE_ONLY) == []
    [long] = copies(client, exp_id, runs["long"].run_id)
    assert long.data.params == {"short": "s", "big": "y" * 6000}
    assert "param 'big' truncated from 7000 to 6000 characters" in json.loads(long.data.tags["trackport.losses"])
    assert summary.counts["runs"]["done"] == 2


def test_long_histories_arrive_whole(target_server, tmp_path):
    """Histories over one log-batch call (1000 points) arrive whole, in several calls."""
    client = MlflowClient(tracking_uri=target_server.url)
    for n in (1000, 10000):
        name = f"rate-{n}-{uuid.uuid4().hex[:8]}"
        run = tiny_run("rate")
        source = TinySource(Experiment("7", name), [(run, [("loss", i, i, 1.0 / (i + 1)) for i in range(n)], {})])
        with rest_sink(target_server.url, tmp_path) as sink:
            exp = sink.put_experiment(source.experiments[0]).target_experiment_id
            from trackport.transfer.units import SourceRunContent

            result = sink.put_run(run, exp, SourceRunContent(source, run))
        assert result.metric_points == n
        history = client.get_metric_history(result.target_run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(i, 1.0 / (i + 1)) for i in range(n)]


def test_deleted_experiment_and_restored_target(target_server, tmp_path):
    client = MlflowClient(tracking_uri=target_server.url)
    name = f"tiny-deleted-{uuid.uuid4().hex[:8]}"
    kept = tiny_run("kept")
    gone = tiny_run("gone", lifecycle_stage="deleted")
    source = TinySource(Experiment("7", name, lifecycle_stage="deleted"), [(kept, [], {}), (gone, [], {})])
    with rest_sink(target_server.url, tmp_path) as sink:
        summary = transfer(source, sink, Selection(include_deleted=True))
    assert summary.failed == 0, summary.failures
    exp = client.get_experiment_by_name(name)
    assert exp.lifecycle_stage == "deleted"
    assert {r.info.lifecycle_stage for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)} == {
        "deleted"
    }

    # The source experiment is active again: the target one is restored (which restores
    # all its runs), the run deleted in the source is deleted again, nothing is rewritten.
    source.experiments[0] = dataclasses.replace(source.experiments[0], lifecycle_stage="active")
    with rest_sink(target_server.url, tmp_path) as sink:
        summary = transfer(source, sink, Selection(include_deleted=True))
    assert summary.counts["runs"] == {"done": 0, "skipped": 2, "failed": 0, "not_selected": 0}
    assert client.get_experiment(exp.experiment_id).lifecycle_stage == "active"
    [kept_copy] = copies(client, exp.experiment_id, kept.run_id)
    [gone_copy] = copies(client, exp.experiment_id, gone.run_id)
    assert (kept_copy.info.lifecycle_stage, gone_copy.info.lifecycle_stage) == ("active", "deleted")


def test_verify_passes_over_a_deleted_partial_copy_and_reports_an_active_one(target_server, tmp_path):
    """A run a killed transfer began in a server is deleted by the next transfer (a server
    cannot purge): verify ignores it then, and reports it while it still looks ordinary."""
    from trackport.transfer.compare import compare_stores

    run = tiny_run("kept", params={"p": "1"})
    source = TinySource(Experiment("7", f"partial-{uuid.uuid4().hex[:8]}"), [(run, [("m", 0, 1, 1.0)], {})])
    with rest_sink(target_server.url, tmp_path) as sink:
        assert transfer(source, sink, Selection(include_deleted=True)).failed == 0
    client = MlflowClient(tracking_uri=target_server.url)
    exp_id = client.get_experiment_by_name(source.experiments[0].name).experiment_id
    partial = client.create_run(exp_id, tags={SOURCE_RUN_TAG: run.run_id}, run_name="kept").info.run_id

    def differences() -> list[str]:
        return [str(d) for d in compare_stores(source, open_source(target_server.url), Selection(include_deleted=True))]

    assert any("2 copies in the target" in d and partial in d for d in differences())
    client.delete_run(partial)
    assert differences() == []
