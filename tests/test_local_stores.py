"""The local sqlite and mlruns stores against MLflow's own client, on real files."""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from trackport.domain import METRIC_SCHEMA, Experiment, Run  # noqa: E402
from trackport.errors import BadInputError, UnitError  # noqa: E402
from trackport.samples import sample_store  # noqa: E402
from trackport.stores.base import Selection, SourceStore  # noqa: E402
from trackport.stores.local_mlruns import MlrunsStore, looks_like_mlruns  # noqa: E402
from trackport.stores.sqlite.store import SqliteStore  # noqa: E402

ALL = Selection(include_deleted=True)


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("samples")
    return {
        "sqlite": sample_store.build_sample_store(base / "sqlite", "sqlite"),
        "mlruns": sample_store.build_sample_store(base / "mlruns", "mlruns"),
    }


@pytest.fixture(autouse=True)
def _allow_file_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def open_source(kind: str, uri: str) -> SourceStore:
    return SqliteStore(uri, create=False) if kind == "sqlite" else MlrunsStore(uri)


def client_for(kind: str, uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri if kind == "sqlite" else Path(uri).as_uri())


def _v(value: float):
    return "nan" if math.isnan(value) else value


def our_history(store: SourceStore, run: Run) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for batch in store.iter_metric_batches(run):
        assert batch.schema == METRIC_SCHEMA
        for k, s, t, v in zip(*(batch.column(i).to_pylist() for i in range(4))):
            out.setdefault(k, []).append((s, t, _v(v)))
    return out


def mlflow_history(client: MlflowClient, run_id: str) -> dict[str, list[tuple]]:
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        points = client.get_metric_history(run_id, key)
        out[key] = sorted(
            ((m.step, m.timestamp, _v(m.value)) for m in points),
            key=lambda p: (p[0], p[1], math.inf if p[2] == "nan" else p[2]),
        )
    return out


def mlflow_artifacts(client: MlflowClient, run_id: str, tmp: Path, path: str = "") -> dict:
    out = {}
    for info in client.list_artifacts(run_id, path or None):
        if info.is_dir:
            out.update(mlflow_artifacts(client, run_id, tmp, info.path))
        else:
            local = client.download_artifacts(run_id, info.path, str(tmp))
            out[info.path] = hashlib.sha256(Path(local).read_bytes()).hexdigest()
    return out


def our_artifacts(store: SourceStore, run: Run) -> dict:
    out = {}
    for f in store.list_artifacts(run):
        with store.open_artifact(run, f.path) as stream:
            data = stream.read()
        assert len(data) == f.size
        out[f.path] = hashlib.sha256(data).hexdigest()
    return out


def mlflow_inputs(client: MlflowClient, run_id: str) -> list[tuple]:
    run = client.get_run(run_id)
    return sorted(
        (
            d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source,
            d.dataset.schema, d.dataset.profile, {t.key: t.value for t in d.tags},
        )
        for d in run.inputs.dataset_inputs
    )


def our_inputs(run: Run) -> list[tuple]:
    return sorted(
        (i.name, i.digest, i.source_type, i.source, i.schema, i.profile, i.tags)
        for i in run.inputs
    )


def compare_run(client: MlflowClient, run: Run, store: SourceStore, tmp: Path) -> None:
    theirs = client.get_run(run.run_id)
    info = theirs.info
    assert (run.run_id, run.run_name, run.user_id, run.status) == (
        info.run_id, info.run_name, info.user_id, info.status
    )
    assert (run.start_time, run.end_time, run.lifecycle_stage) == (
        info.start_time, info.end_time, info.lifecycle_stage
    )
    assert run.experiment_id == info.experiment_id
    assert run.artifact_uri == info.artifact_uri
    assert run.params == theirs.data.params
    assert run.tags == theirs.data.tags
    assert our_inputs(run) == mlflow_inputs(client, run.run_id)
    assert our_artifacts(store, run) == mlflow_artifacts(client, run.run_id, tmp / run.run_id)


@pytest.mark.parametrize("kind", ["sqlite", "mlruns"])
def test_source_matches_mlflow_client(samples, kind, tmp_path):
    uri = samples[kind]
    store = open_source(kind, uri)
    client = client_for(kind, uri)
    experiments = list(store.list_experiments(ALL))
    theirs = {e.experiment_id: e for e in client.search_experiments(view_type=ViewType.ALL)}
    assert {e.experiment_id for e in experiments} == set(theirs)
    counts = {"experiments": 0, "runs": 0, "metric_points": 0, "artifact_files": 0, "artifact_bytes": 0}
    for exp in experiments:
        other = theirs[exp.experiment_id]
        assert (exp.name, exp.lifecycle_stage, exp.artifact_location) == (
            other.name, other.lifecycle_stage, other.artifact_location
        )
        assert (exp.creation_time, exp.last_update_time) == (
            other.creation_time, other.last_update_time
        )
        assert exp.tags == other.tags
        counts["experiments"] += 1
        runs = list(store.iter_runs(exp, ALL))
        their_runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
        assert {r.run_id for r in runs} == {r.info.run_id for r in their_runs}
        assert [r.start_time for r in runs] == sorted(r.start_time for r in runs)
        for run in runs:
            compare_run(client, run, store, tmp_path)
            ours = our_history(store, run)
            expected = mlflow_history(client, run.run_id)
            if kind == "mlruns" and "eval_acc" in expected:
                # MLflow's FileStore reads step=0 for lines that carry a dataset; we do not.
                assert {p[0] for p in expected["eval_acc"]} == {0}
                expected["eval_acc"] = sorted(
                    (s, ts, v) for _, ts, v, s in sample_store.EVAL_METRICS
                )
            assert ours == expected
            counts["runs"] += 1
            counts["metric_points"] += sum(len(v) for v in ours.values())
            files = list(store.list_artifacts(run))
            counts["artifact_files"] += len(files)
            counts["artifact_bytes"] += sum(f.size for f in files)
    assert counts == sample_store.SAMPLE_COUNTS


@pytest.mark.parametrize("kind", ["sqlite", "mlruns"])
def test_artifact_paths_are_refused_like_in_every_store(samples, kind):
    """trackport._files.check_relpath decides, before any file is looked at."""
    store = open_source(kind, samples[kind])
    exp = next(e for e in store.list_experiments(ALL) if e.name == sample_store.EXPERIMENT_A)
    run = next(r for r in store.iter_runs(exp, ALL) if r.run_name == "parent run")
    for bad in ("model\\MLmodel", "../outside.txt", "/etc/passwd", "a/./b", ""):
        with pytest.raises(UnitError, match=f"^run {run.run_id}: artifact path refused: "):
            store.open_artifact(run, bad)
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "mlruns"])
def test_source_sample_content(samples, kind):
    """The corners the sample is meant to hold are really there."""
    store = open_source(kind, samples[kind])
    exps = {e.name: e for e in store.list_experiments(ALL)}
    assert set(exps) == {"Default", sample_store.EXPERIMENT_A, sample_store.EXPERIMENT_B}
    runs = {r.run_name: r for e in exps.values() for r in store.iter_runs(e, ALL)}
    assert runs["grandchild"].parent_run_id == runs["child"].run_id
    assert runs["child"].parent_run_id == runs["parent run"].run_id
    assert runs["deleted run"].lifecycle_stage == "deleted"
    assert runs["deleted run"].deleted_time is not None
    assert runs["still running"].end_time is None
    assert runs["parent run"].params["long"] == sample_store.LONG_PARAM
    assert runs["parent run"].tags["mlflow.note.content"] == sample_store.NOTE
    history = our_history(store, runs["parent run"])
    values = [p[2] for p in history["métrique précision"]]
    big = math.inf if kind == "mlruns" else 1.7976931348623157e308  # MLflow's sqlite clamps
    assert values == ["nan", big, -big, 0.5]
    assert len(history["loss"]) == 1000
    assert [p[0] for p in history["loss val"]] == [0, 0, 1, 1, 2]
    # The default selection hides the deleted run; selecting by name or id works.
    active = [r.run_name for e in store.list_experiments(Selection()) for r in store.iter_runs(e, Selection())]
    assert "deleted run" not in active and len(active) == sample_store.SAMPLE_COUNTS_ACTIVE["runs"]
    exp_a = exps[sample_store.EXPERIMENT_A]
    by_id = list(store.list_experiments(Selection(experiments=(exp_a.experiment_id,))))
    assert [e.name for e in by_id] == [exp_a.name]
    with pytest.raises(BadInputError, match="no-such-experiment"):
        list(store.list_experiments(Selection(experiments=("no-such-experiment",))))
    child_id = runs["child"].run_id
    sel = Selection(run_ids=(child_id,))
    picked = [(e.name, r.run_id) for e in store.list_experiments(sel) for r in store.iter_runs(e, sel)]
    assert picked == [(exp_a.name, child_id)]


class Content:
    """RunContent over a source store's run, as the engine would hand it to a sink."""

    def __init__(self, store: SourceStore, run: Run):
        self.store, self.run = store, run

    def metric_batches(self) -> Iterator[pa.RecordBatch]:
        return self.store.iter_metric_batches(self.run)

    def artifact_files(self):
        return self.store.list_artifacts(self.run)

    def open_artifact(self, path: str):
        return self.store.open_artifact(self.run, path)


def copy_all(source: SourceStore, sink: SqliteStore) -> list:
    results = []
    for exp in source.list_experiments(ALL):
        written = sink.put_experiment(exp)
        again = sink.put_experiment(exp)  # idempotent: found, not made again
        assert again.target_experiment_id == written.target_experiment_id
        assert not again.created or exp.name == "Default"  # a new store's Default takes the source's
        target = written.target_experiment_id
        for run in source.iter_runs(exp, ALL):
            assert sink.find_run(run, target) is None
            results.append(sink.put_run(run, target, Content(source, run)))
            assert sink.find_run(run, target) == run.run_id
    return results


def test_sqlite_sink_round_trip(samples, tmp_path):
    source = SqliteStore(samples["sqlite"], create=False)
    target_uri = f"sqlite:///{tmp_path / 'target' / 'mlflow.db'}"
    sink = SqliteStore(target_uri, create=True)
    results = copy_all(source, sink)
    assert sum(r.metric_points for r in results) == sample_store.SAMPLE_COUNTS["metric_points"]
    assert sum(r.artifact_files for r in results) == sample_store.SAMPLE_COUNTS["artifact_files"]
    assert sum(r.artifact_bytes for r in results) == sample_store.SAMPLE_COUNTS["artifact_bytes"]
    assert not any(r.losses for r in results)
    assert sink.state_dir() == Path(str(tmp_path / "target" / "mlflow.db") + ".trackport")

    src_client = MlflowClient(tracking_uri=samples["sqlite"])
    dst_client = MlflowClient(tracking_uri=target_uri)
    src_exps = {e.name: e for e in src_client.search_experiments(view_type=ViewType.ALL)}
    dst_exps = {e.name: e for e in dst_client.search_experiments(view_type=ViewType.ALL)}
    assert set(src_exps) == set(dst_exps)
    for name, exp in src_exps.items():
        other = dst_exps[name]
        assert (other.experiment_id, other.lifecycle_stage, other.tags) == (
            exp.experiment_id, exp.lifecycle_stage, exp.tags
        )
        if name != "Default":  # the fresh store made its own Default
            assert (other.creation_time, other.last_update_time) == (
                exp.creation_time, exp.last_update_time
            )
            root = (tmp_path / "target" / "mlflow-artifacts").as_posix()  # the store's own folder
            assert other.artifact_location == f"{root}/{other.experiment_id}"
        src_runs = src_client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
        dst_runs = {
            r.info.run_id: r
            for r in dst_client.search_runs([other.experiment_id], run_view_type=ViewType.ALL)
        }
        assert set(dst_runs) == {r.info.run_id for r in src_runs}
        for src in src_runs:
            dst = dst_runs[src.info.run_id]
            for field in ("run_name", "user_id", "status", "start_time", "end_time", "lifecycle_stage"):
                assert getattr(dst.info, field) == getattr(src.info, field), field
            assert dst.info.artifact_uri == f"{other.artifact_location}/{src.info.run_id}/artifacts"
            assert dst.data.params == src.data.params
            assert dst.data.tags == src.data.tags
            # run.data.metrics comes from latest_metrics: proves we maintain it like MLflow.
            assert {k: _v(v) for k, v in dst.data.metrics.items()} == {
                k: _v(v) for k, v in src.data.metrics.items()
            }
            rid = src.info.run_id
            assert mlflow_history(dst_client, rid) == mlflow_history(src_client, rid)
            assert mlflow_inputs(dst_client, rid) == mlflow_inputs(src_client, rid)
            assert mlflow_artifacts(dst_client, rid, tmp_path / "d" / rid) == mlflow_artifacts(
                src_client, rid, tmp_path / "s" / rid
            )
    # deleted_time is not in MLflow's RunInfo: compare it through the stores.
    back = SqliteStore(target_uri, create=False)
    times = lambda st: {  # noqa: E731
        r.run_id: r.deleted_time for e in st.list_experiments(ALL) for r in st.iter_runs(e, ALL)
    }
    assert times(back) == times(source)
    assert any(t is not None for t in times(back).values())


def test_mlruns_to_sqlite_keeps_infinity(samples, tmp_path):
    source = MlrunsStore(samples["mlruns"])
    target_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = SqliteStore(target_uri, create=True)
    copy_all(source, sink)
    client = MlflowClient(tracking_uri=target_uri)
    parent = next(
        r for e in source.list_experiments(ALL) for r in source.iter_runs(e, ALL)
        if r.run_name == "parent run"
    )
    history = client.get_metric_history(parent.run_id, "métrique précision")
    values = [_v(m.value) for m in sorted(history, key=lambda m: m.step)]
    assert values == ["nan", math.inf, -math.inf, 0.5]
    # The file store's experiment ids (18 digits) are free in the target, so they are kept.
    assert client.get_run(parent.run_id).info.experiment_id == parent.experiment_id
    eval_steps = sorted(m.step for m in client.get_metric_history(parent.run_id, "eval_acc"))
    assert eval_steps == [5, 6]


class ListContent:
    def __init__(self, batch: pa.RecordBatch):
        self.batch = batch

    def metric_batches(self):
        return iter([self.batch])

    def artifact_files(self):
        return iter(())

    def open_artifact(self, path):
        raise AssertionError("no artifacts")


def _one_run(run_id: str, exp_id: str) -> Run:
    return Run(
        run_id=run_id, experiment_id=exp_id, run_name="r", user_id="u", status="FINISHED",
        start_time=1, end_time=2,
    )


def test_sink_infinity_nan_and_duplicates(tmp_path):
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    sink = SqliteStore(uri, create=True)
    exp_id = sink.put_experiment(Experiment(experiment_id="7", name="inf", creation_time=5)).target_experiment_id
    assert exp_id == "7"
    batch = pa.RecordBatch.from_pylist(
        [
            {"key": "m", "step": 0, "timestamp": 10, "value": math.inf},
            {"key": "m", "step": 1, "timestamp": 11, "value": -math.inf},
            {"key": "m", "step": 2, "timestamp": 12, "value": math.nan},
            {"key": "m", "step": 2, "timestamp": 12, "value": math.nan},  # exact duplicate
            {"key": "m", "step": 3, "timestamp": 13, "value": 1.0},
            {"key": "m", "step": 3, "timestamp": 13, "value": 1.0},  # exact duplicate
        ],
        schema=METRIC_SCHEMA,
    )
    result = sink.put_run(_one_run("a" * 32, exp_id), exp_id, ListContent(batch))
    assert result.metric_points == 4 and len(result.losses) == 1
    client = MlflowClient(tracking_uri=uri)
    history = sorted(client.get_metric_history("a" * 32, "m"), key=lambda m: m.step)
    assert [_v(m.value) for m in history] == [math.inf, -math.inf, "nan", 1.0]
    assert client.get_run("a" * 32).data.metrics == {"m": 1.0}
    # An id already taken in the target is not reused; the name is.
    other = sink.put_experiment(Experiment(experiment_id="7", name="other")).target_experiment_id
    assert other != "7"
    assert sink.put_experiment(Experiment(experiment_id="99", name="inf")).target_experiment_id == "7"
    deleted = sink.put_experiment(Experiment(experiment_id="8", name="gone", lifecycle_stage="deleted")).target_experiment_id
    assert client.get_experiment(deleted).lifecycle_stage == "deleted"


def test_missing_sources_create_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(BadInputError, match="no MLflow sqlite store"):
        SqliteStore(f"sqlite:///{missing}", create=False)
    with pytest.raises(BadInputError):
        SqliteStore(str(missing), create=False)
    assert not (tmp_path / "nowhere").exists()
    not_mlflow = tmp_path / "other.db"
    not_mlflow.write_bytes(b"")
    with pytest.raises(BadInputError, match="not an MLflow"):
        SqliteStore(str(not_mlflow), create=False)
    assert not_mlflow.read_bytes() == b""
    with pytest.raises(BadInputError):
        MlrunsStore(tmp_path / "no-mlruns")
    assert not (tmp_path / "no-mlruns").exists()
    assert not looks_like_mlruns(tmp_path)
    with pytest.raises(BadInputError):
        MlrunsStore(tmp_path)


def test_plain_path_sink_and_describe(tmp_path):
    path = tmp_path / "new" / "dir" / "store.db"
    sink = SqliteStore(str(path), create=True)
    assert path.is_file()
    assert sink.describe().kind == "sqlite" and sink.describe().mlflow_version == mlflow.__version__
    assert sink.capabilities.keeps_infinity and sink.capabilities.keeps_run_ids
    assert os.path.isfile(str(path) + ".trackport/filling")  # a new database, filled without fsyncs
    with contextlib.suppress(Exception):
        sink.close()
    assert not os.path.exists(str(path) + ".trackport/filling")  # fsynced at close
    assert sink.state_dir() == Path(str(path) + ".trackport")


def test_mlruns_damaged_run_is_unreadable(tmp_path):
    from trackport.stores.base import Unreadable

    root = Path(sample_store.build_sample_store(tmp_path, "mlruns"))
    store = MlrunsStore(root)
    exp = next(e for e in store.list_experiments(ALL) if e.name == sample_store.EXPERIMENT_B)
    victim = next(iter(store.iter_runs(exp, ALL)))
    (root / exp.experiment_id / victim.run_id / "meta.yaml").write_text("status: [unclosed\n")
    items = list(store.iter_runs(exp, ALL))
    bad = [i for i in items if isinstance(i, Unreadable)]
    assert [b.source_id for b in bad] == [victim.run_id]
    assert len(items) == 2


def test_traces_an_mlruns_folder_holds_are_declared_not_read(tmp_path, monkeypatch):
    """The mlruns reader does not read traces: a folder holding them says so before anything
    is written, and the summary records it (nothing left out silently)."""
    import json

    from click.testing import CliRunner

    from trackport.cli.main import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = MlflowClient(uri).create_experiment("traced")
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)  # not set_experiment: it outlives the test
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.log_param("p", "1")
        for question in ("?", "!"):
            with mlflow.start_span("answer") as span:
                span.set_inputs({"q": question})
        mlflow.flush_trace_async_logging()
    finally:
        mlflow.set_tracking_uri(None)
    said = CliRunner().invoke(cli, ["export", str(tmp_path / "mlruns"), str(tmp_path / "bundle")])
    assert said.exit_code == 0, said.output
    assert "not read from the source: traces: the folder holds 2," in said.stderr
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "mlruns"), str(tmp_path / "bundle2"), "--json"])
    summary = json.loads(result.stdout)
    assert any(line.startswith("traces: the folder holds 2,") for line in summary["planned_losses"]), summary
