"""RestSource against real MLflow servers, checked against what MLflow's own client reads."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import uuid

import pyarrow as pa
import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_snapshot import snapshot  # noqa: E402

from trackport.config import DEFAULT, TransferConfig  # noqa: E402
from trackport.domain import METRIC_SCHEMA, Run  # noqa: E402
from trackport.errors import BadInputError, UnitError  # noqa: E402
from trackport.samples import sample_store  # noqa: E402
from trackport.stores.base import Selection  # noqa: E402
from trackport.stores.rest.server import connect  # noqa: E402
from trackport.stores.rest.source import RestSource  # noqa: E402

ALL = Selection(include_deleted=True)


def open_rest(url: str, config: TransferConfig = DEFAULT) -> RestSource:
    client, info = connect(url, "source", config=config)
    return RestSource(client, url, info, config=config)


@pytest.fixture
def source(source_server):
    store = open_rest(source_server.url)
    yield store
    store.close()


@pytest.fixture(scope="module")
def expected(source_server) -> dict:
    """The sample server as MLflow's client reads it."""
    return snapshot(source_server.url)


def _read_all(store: RestSource, run: Run) -> tuple[dict, int]:
    """(sha256 by path, bytes) of the run's artifacts, read through the store in chunks."""
    hashes = {}
    total = 0
    for file in store.list_artifacts(run):
        digest = hashlib.sha256()
        size = 0
        with store.open_artifact(run, file.path) as stream:
            while chunk := stream.read(1000):
                digest.update(chunk)
                size += len(chunk)
        assert size == file.size, file
        hashes[file.path] = digest.hexdigest()
        total += size
    return hashes, total


def _check_batches(batches: list[pa.RecordBatch]) -> pa.Table:
    for batch in batches:
        assert batch.schema == METRIC_SCHEMA
    table = pa.Table.from_batches(batches, schema=METRIC_SCHEMA)
    rows = list(zip(*(table.column(c).to_pylist() for c in ("key", "step", "timestamp", "value"))))
    # Sorted by (key, step, timestamp, value), NaN after numbers.
    sort_key = [(k, s, t, (1, 0.0) if math.isnan(v) else (0, v)) for k, s, t, v in rows]
    assert sort_key == sorted(sort_key)
    return table


def rest_snapshot(store: RestSource, selection: Selection = ALL) -> dict:
    """The same shape as mlflow_snapshot.snapshot, read through RestSource."""
    result = {}
    for exp in store.list_experiments(selection):
        runs = {}
        for run in store.iter_runs(exp, selection):
            table = _check_batches(list(store.iter_metric_batches(run)))
            metrics: dict[str, list] = {}
            for key, step, ts, value in zip(*(table.column(c).to_pylist() for c in ("key", "step", "timestamp", "value"))):
                metrics.setdefault(key, []).append((step, ts, repr(value)))
            runs[run.run_id] = {
                "experiment_id": run.experiment_id,
                "run_name": run.run_name,
                "user_id": run.user_id,
                "status": run.status,
                "start_time": run.start_time,
                "end_time": run.end_time,
                "lifecycle_stage": run.lifecycle_stage,
                "deleted_time": run.deleted_time,
                "params": run.params,
                "tags": run.tags,
                "metrics": {k: sorted(v) for k, v in metrics.items()},
                "inputs": sorted(
                    (d.name, d.digest, d.source_type, d.source, d.schema, d.profile, tuple(sorted(d.tags.items())))
                    for d in run.inputs
                ),
                "artifacts": _read_all(store, run)[0],
            }
        result[exp.name] = {
            "experiment_id": exp.experiment_id,
            "lifecycle_stage": exp.lifecycle_stage,
            "tags": exp.tags,
            "creation_time": exp.creation_time,
            "last_update_time": exp.last_update_time,
            "runs": runs,
        }
    return result


def _names(store: RestSource, selection: Selection) -> list[str]:
    return [e.name for e in store.list_experiments(selection)]


def _run_names(store: RestSource, selection: Selection) -> list[str]:
    return [r.run_name for e in store.list_experiments(selection) for r in store.iter_runs(e, selection)]


# ------------------------------------------------------------------------- the sample


def test_reads_what_mlflow_reads(source, expected, source_server):
    got = rest_snapshot(source)
    assert got == expected
    # Spot checks that the comparison is not vacuous.
    assert len(got) == sample_store.SAMPLE_COUNTS["experiments"]
    runs = [r for e in got.values() for r in e["runs"].values()]
    assert len(runs) == sample_store.SAMPLE_COUNTS["runs"]
    points = sum(len(h) for r in runs for h in r["metrics"].values())
    assert points == sample_store.SAMPLE_COUNTS["metric_points"]
    assert sum(len(r["artifacts"]) for r in runs) == sample_store.SAMPLE_COUNTS["artifact_files"]
    parent = next(r for r in runs if r["run_name"] == "parent run")
    assert parent["metrics"]["métrique précision"][0] == (0, sample_store.BASE_TIME + 1, "nan")
    assert parent["inputs"] and parent["inputs"][0][0] == "iris"

    desc = source.describe()
    assert desc.kind == "rest" and desc.uri == source_server.url and desc.mlflow_version == mlflow.__version__


def test_run_fields_and_bytes(source, source_server):
    client = MlflowClient(tracking_uri=source_server.url)
    exp = next(e for e in source.list_experiments(ALL) if e.name == sample_store.EXPERIMENT_A)
    runs = list(source.iter_runs(exp, ALL))
    starts = [r.start_time for r in runs]
    assert starts == sorted(starts)
    for run in runs:
        info = client.get_run(run.run_id).info
        assert run.artifact_uri == info.artifact_uri
        assert run.artifact_uri.startswith("mlflow-artifacts:")
    parent = next(r for r in runs if r.run_name == "parent run")
    assert parent.parent_run_id is None
    child = next(r for r in runs if r.run_name == "child")
    assert child.parent_run_id == parent.run_id
    hashes, total = _read_all(source, parent)
    expected_mlmodel = sample_store.PARENT_ARTIFACTS["MLmodel"] + f"run_id: {parent.run_id}\n".encode()
    assert hashes["MLmodel"] == hashlib.sha256(expected_mlmodel).hexdigest()
    assert hashes["notes with space.txt"] == hashlib.sha256(sample_store.PARENT_ARTIFACTS["notes with space.txt"]).hexdigest()
    assert "empty.txt" in hashes


def test_history_with_and_without_remembered_keys(source, source_server):
    """The 1000-point history, read both right after iter_runs and for a Run met otherwise."""
    exp = next(e for e in source.list_experiments(ALL) if e.name == sample_store.EXPERIMENT_A)
    parent = next(r for r in source.iter_runs(exp, ALL) if r.run_name == "parent run")
    assert parent.run_id in source._latest
    first = pa.Table.from_batches(list(source.iter_metric_batches(parent)))
    assert parent.run_id not in source._latest  # popped when used
    other = open_rest(source_server.url)
    try:
        second = pa.Table.from_batches(list(other.iter_metric_batches(parent)))  # via runs/get
    finally:
        other.close()
    assert repr(first.to_pylist()) == repr(second.to_pylist())  # NaN-aware
    assert first.num_rows == len(sample_store.PARENT_METRICS) + len(sample_store.EVAL_METRICS)


@pytest.fixture
def paged_source(source_server):
    # A history page of 2 would mean 500 calls for the 1000-point history; 97 still pages
    # it (11 pages, the last one short) and keeps the test quick.
    config = TransferConfig(
        rest_experiments_page=2, rest_runs_page=2, rest_history_page=97, rest_run_ids_per_filter=2, metric_batch_rows=3
    )
    store = open_rest(source_server.url, config)
    yield store
    store.close()


def test_paging_gives_the_same_result(paged_source, expected, monkeypatch):
    source = paged_source
    calls = []
    original = source.client.call

    def counting(method, endpoint, **kwargs):
        calls.append((endpoint, (kwargs.get("params") or {}).get("page_token") or (kwargs.get("body") or {}).get("page_token")))
        return original(method, endpoint, **kwargs)

    monkeypatch.setattr(source.client, "call", counting)
    assert rest_snapshot(source) == expected
    paged = {endpoint.rsplit("/mlflow/", 1)[1] for endpoint, token in calls if token}
    assert {"experiments/search", "runs/search", "metrics/get-history"} <= paged
    # Run-id filters in chunks of 2 (4 ids -> 2 chunks), merged back in start_time order.
    ids = [r for e in expected.values() for r in e["runs"]]
    names = _run_names(source, Selection(run_ids=tuple(ids), include_deleted=True))
    assert names == ["parent run", "child", "grandchild", "deleted run", "killed run", "still running"]


# ------------------------------------------------------------------------- selection


def test_selection(source, expected):
    a, b = sample_store.EXPERIMENT_A, sample_store.EXPERIMENT_B
    assert _names(source, Selection()) == ["Default", a, b]
    assert _names(source, Selection(experiments=(b,))) == [b]
    assert _names(source, Selection(experiments=(expected[a]["experiment_id"], b))) == [a, b]
    # Named twice (by id and by name) is still one experiment.
    assert _names(source, Selection(experiments=(a, expected[a]["experiment_id"]))) == [a]

    active = _run_names(source, Selection(experiments=(a,)))
    assert active == ["parent run", "child", "grandchild"]
    assert _run_names(source, Selection(experiments=(a,), include_deleted=True)) == active + ["deleted run"]

    ids = {v["run_name"]: k for e in expected.values() for k, v in e["runs"].items()}
    sel = Selection(run_ids=(ids["killed run"], ids["child"]))
    assert _names(source, sel) == [a, b]
    assert _run_names(source, sel) == ["child", "killed run"]
    sel = Selection(experiments=(b,), run_ids=(ids["killed run"], ids["child"]))
    assert _run_names(source, sel) == ["killed run"]
    # The deleted run only with include_deleted.
    assert _run_names(source, Selection(run_ids=(ids["deleted run"],))) == []
    assert _run_names(source, Selection(run_ids=(ids["deleted run"],), include_deleted=True)) == ["deleted run"]


def test_unknown_names_are_bad_input(source):
    with pytest.raises(BadInputError, match="no-such-experiment"):
        list(source.list_experiments(Selection(experiments=("no-such-experiment",))))
    with pytest.raises(BadInputError, match="987654"):
        list(source.list_experiments(Selection(experiments=("987654",))))
    with pytest.raises(BadInputError, match="0123456789abcdef0123456789abcdef"):
        list(source.list_experiments(Selection(run_ids=("0123456789abcdef0123456789abcdef",))))


def test_filter_is_passed_through(source, expected):
    """What the server reads as trackport does goes to its search, with run ids beside it."""
    b = sample_store.EXPERIMENT_B
    ids = {v["run_name"]: k for e in expected.values() for k, v in e["runs"].items()}
    exp = next(e for e in source.list_experiments(Selection(experiments=(b,))))
    sel = Selection(experiments=(b,), filter="attributes.status = 'KILLED'")
    assert [r.run_name for r in source.iter_runs(exp, sel)] == ["killed run"]
    sel = dataclasses.replace(sel, run_ids=(ids["still running"],))
    assert [r.run_name for r in source.iter_runs(exp, sel)] == []
    sel = dataclasses.replace(sel, filter="params.nothing = 'x'", run_ids=())
    assert list(source.iter_runs(exp, sel)) == []


def test_artifact_paths_are_guarded(source, expected):
    exp = next(e for e in source.list_experiments(ALL) if e.name == sample_store.EXPERIMENT_A)
    run = next(source.iter_runs(exp, ALL))
    for bad in ("../x", "a/../../b", "/etc/passwd", "", "C:/x", "a//b"):
        with pytest.raises(UnitError):
            with source.open_artifact(run, bad):
                pass


# ------------------------------------------------------------------------- written here


def test_zero_fields_unicode_paths_and_special_values(target_server, tmp_path):
    client = MlflowClient(tracking_uri=target_server.url)
    exp_id = client.create_experiment(f"rest-source-zero-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(exp_id).info.run_id
    client.log_batch(
        run_id,
        metrics=[
            Metric("zero", 0.0, 0, 0),
            Metric("zero", -0.0, 0, 1),
            Metric("special", float("nan"), 5, 0),
            Metric("special", float("inf"), 6, 0),
            Metric("special", float("-inf"), 7, 0),
            Metric("special", 2.5, 1, 0),  # same step: ordered by timestamp
            Metric("big", 1e300, 2**40, 2**40),
        ],
    )
    files = {
        "dossier été/fïchier ü.txt": "ünïcödé\n".encode(),
        # MLflow's own upload does not quote '%', '#' or '?', so those cannot be stored this way.
        "a+b&c=d/semi;colon,comma'quote (1).txt": b"odd characters\n",
        "archive.tar.gz": gzip.compress(b"compressed payload" * 100),
    }
    src = tmp_path / "art"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    import os

    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = target_server.url
    try:
        get_artifact_repository(client.get_run(run_id).info.artifact_uri).log_artifacts(str(src))
    finally:
        if old is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old

    store = open_rest(target_server.url)
    try:
        (exp,) = store.list_experiments(Selection(experiments=(exp_id,)))
        (run,) = store.iter_runs(exp, Selection(experiments=(exp_id,)))
        table = _check_batches(list(store.iter_metric_batches(run)))
        rows = table.to_pylist()
        zero = [r for r in rows if r["key"] == "zero"]
        assert zero[0] == {"key": "zero", "step": 0, "timestamp": 0, "value": 0.0}
        assert zero[1]["step"] == 1 and zero[1]["value"] == 0.0
        special = [(r["timestamp"], r["value"]) for r in rows if r["key"] == "special"]
        assert special[0] == (1, 2.5)
        assert math.isnan(special[1][1])
        # A SQL server clamps infinities; keep what it says, as MLflow's client does.
        by_ts = {ts: v for ts, v in special}
        history = {m.timestamp: m.value for m in client.get_metric_history(run_id, "special")}
        assert by_ts[6] == history[6] and by_ts[7] == history[7] and by_ts[6] > 1e308 and by_ts[7] < -1e308
        assert [r for r in rows if r["key"] == "big"] == [{"key": "big", "step": 2**40, "timestamp": 2**40, "value": 1e300}]

        hashes, _ = _read_all(store, run)
        assert hashes == {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
        # The same bytes through /get-artifact (the path for artifact stores we cannot reach).
        import dataclasses

        remote = dataclasses.replace(run, artifact_uri="s3://elsewhere/artifacts")
        assert _read_all(store, remote)[0] == hashes
    finally:
        store.close()


def test_local_artifact_uri_is_read_directly(target_server, tmp_path):
    root = tmp_path / "local-artifacts"
    client = MlflowClient(tracking_uri=target_server.url)
    exp_id = client.create_experiment(f"rest-source-local-{uuid.uuid4().hex[:8]}", artifact_location=root.as_uri())
    run_id = client.create_run(exp_id).info.run_id
    client.log_text(run_id, "local text", "sub/x.txt")
    store = open_rest(target_server.url)
    try:
        (exp,) = store.list_experiments(Selection(experiments=(exp_id,)))
        (run,) = store.iter_runs(exp, Selection())
        assert run.artifact_uri.startswith("file://")
        calls = []
        original = store.client.request
        store.client.request = lambda *a, **k: calls.append(a) or original(*a, **k)
        with store.open_artifact(run, "sub/x.txt") as f:
            assert f.read() == b"local text"
        assert calls == []  # read from disk, no download
    finally:
        store.close()


def test_empty_run_has_no_artifacts_or_metrics(target_server):
    client = MlflowClient(tracking_uri=target_server.url)
    exp_id = client.create_experiment(f"rest-source-empty-{uuid.uuid4().hex[:8]}")
    client.create_run(exp_id)
    store = open_rest(target_server.url)
    try:
        (exp,) = store.list_experiments(Selection(experiments=(exp_id,)))
        (run,) = store.iter_runs(exp, Selection())
        assert list(store.list_artifacts(run)) == []
        assert list(store.iter_metric_batches(run)) == []
    finally:
        store.close()


def test_deleted_experiment_selection(target_server):
    client = MlflowClient(tracking_uri=target_server.url)
    name = f"rest-source-deleted-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    client.create_run(exp_id)
    client.delete_experiment(exp_id)
    store = open_rest(target_server.url)
    try:
        assert _names(store, Selection(experiments=(name,))) == []
        assert name not in _names(store, Selection())
        assert name in _names(store, Selection(include_deleted=True))
        (exp,) = store.list_experiments(Selection(experiments=(exp_id,), include_deleted=True))
        assert exp.lifecycle_stage == "deleted"
        mlflow_exp = client.get_experiment(exp_id)
        assert (exp.creation_time, exp.last_update_time) == (mlflow_exp.creation_time, mlflow_exp.last_update_time)
        assert len(list(store.iter_runs(exp, Selection(include_deleted=True)))) == 1
        assert list(store.iter_runs(exp, Selection())) == []
    finally:
        store.close()


def test_reads_through_basic_auth(auth_server, auth_env):
    client = MlflowClient(tracking_uri=auth_server.url)  # credentials from auth_env
    name = f"rest-source-auth-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    run_id = client.create_run(exp_id, tags={"k": "v"}).info.run_id
    client.log_metric(run_id, "m", 1.5, timestamp=10, step=3)
    client.log_text(run_id, "secret text", "t.txt")
    store = open_rest(auth_server.url)
    try:
        (exp,) = store.list_experiments(Selection(experiments=(name,)))
        (run,) = store.iter_runs(exp, Selection())
        assert run.run_id == run_id and run.tags["k"] == "v"
        rows = pa.Table.from_batches(list(store.iter_metric_batches(run))).to_pylist()
        assert rows == [{"key": "m", "step": 3, "timestamp": 10, "value": 1.5}]
        hashes, _ = _read_all(store, run)
        assert hashes == {"t.txt": hashlib.sha256(b"secret text").hexdigest()}
    finally:
        store.close()


def test_remembered_keys_are_bounded(source_server):
    source = open_rest(source_server.url, TransferConfig(rest_remembered_runs=1))
    try:
        exp = next(e for e in source.list_experiments(ALL) if e.name == sample_store.EXPERIMENT_A)
        runs = list(source.iter_runs(exp, ALL))
        assert list(source._latest) == [runs[-1].run_id]
        parent = runs[0]
        table = pa.Table.from_batches(list(source.iter_metric_batches(parent)))  # via runs/get
        assert table.num_rows == len(sample_store.PARENT_METRICS) + len(sample_store.EVAL_METRICS)
    finally:
        source.close()


def test_artifact_paths_are_refused_like_in_every_store(source):
    """trackport._files.check_relpath decides, as for the other stores: a backslash is
    refused, not read as a separator."""
    exp = next(e for e in source.list_experiments(ALL) if e.name == sample_store.EXPERIMENT_A)
    run = next(r for r in source.iter_runs(exp, ALL) if isinstance(r, Run))
    for bad in ("model\\MLmodel", "../outside.txt", "/etc/passwd", "C:/x", "a//b", ""):
        with pytest.raises(UnitError, match=f"^run {run.run_id}: artifact path refused: "):
            with source.open_artifact(run, bad):
                pass
