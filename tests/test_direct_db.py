"""Reading an MLflow backend database directly (no server, no MLflow store layer):
the same bundle as the REST export of the same data, strictly read-only."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.domain import METRIC_SCHEMA
from trackport.errors import BadInputError, FatalError
from trackport.search import FilterError
from trackport.selection import runs_of
from trackport.samples.sample_store import SAMPLE_COUNTS
from trackport.config import TransferConfig
from trackport.opening import open_sink, open_source
from trackport.stores.base import Selection
from trackport.stores.mlflow_db.uri import split_uri_options
from trackport.transfer.compare import compare_stores

ALL = Selection(include_deleted=True)


def _export(source: str, bundle: Path) -> dict:
    result = CliRunner().invoke(cli, ["export", source, str(bundle), "--include-deleted", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _docs(bundle: Path, name: str) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in bundle.rglob(name)}


def test_direct_sqlite_export_equals_rest_export(source_server, tmp_path):
    db = source_server.workdir / "mlflow.db"
    artifacts = source_server.workdir / "mlartifacts"
    direct, rest = tmp_path / "direct", tmp_path / "rest"
    # The server is running on this database: the direct reader must not disturb it.
    summary = _export(f"sqlite:///{db}?artifacts_destination={artifacts}", direct)
    _export(source_server.url, rest)
    assert summary["counts"]["runs"]["done"] == SAMPLE_COUNTS["runs"]
    assert summary["counts"]["metric_points"]["done"] == SAMPLE_COUNTS["metric_points"]
    assert summary["counts"]["artifact_bytes"]["done"] == SAMPLE_COUNTS["artifact_bytes"]

    assert list(compare_stores(open_source(str(direct)), open_source(str(rest)), ALL)) == []
    assert list(compare_stores(open_source(str(rest)), open_source(str(direct)), ALL)) == []

    runs_direct, runs_rest = _docs(direct, "run.json"), _docs(rest, "run.json")
    assert set(runs_direct) == set(runs_rest) and len(runs_direct) == SAMPLE_COUNTS["runs"]
    deleted = 0
    for run_id, doc in runs_direct.items():
        other = runs_rest[run_id]
        # MLflow's REST API has no deleted_time: only the database knows when a run was deleted.
        if doc["info"]["lifecycle_stage"] == "deleted":
            deleted += 1
            assert doc["info"]["deleted_time"] is not None
            assert other["info"]["deleted_time"] is None
        doc["info"].pop("deleted_time"), other["info"].pop("deleted_time")
        assert doc == other, run_id
    assert deleted >= 1
    assert _docs(direct, "experiment.json") == _docs(rest, "experiment.json")


def test_server_artifacts_need_the_destination(source_server, tmp_path):
    db = source_server.workdir / "mlflow.db"
    result = CliRunner().invoke(cli, ["export", f"sqlite:///{db}", str(tmp_path / "b"), "--include-deleted", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["failures"]
    refused = {f["source_id"] for f in report["failures"]}
    for failure in report["failures"]:  # the runs with artifacts, and the children of those
        assert "artifacts_destination" in failure["reason"] or (
            failure["reason"].startswith("its parent run ") and failure["reason"].split()[3] in refused
        ), failure


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sqlite_source_is_read_only(sample_sqlite, tmp_path):
    original = Path(sample_sqlite[len("sqlite:///"):])
    db = tmp_path / "copy" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(original, db)
    for p in original.parent.iterdir():  # artifacts live next to the sample database
        if p.is_dir() and p.name != "mlflow.db.trackport":
            shutil.copytree(p, db.parent / p.name)
    before = (_sha(db), db.stat().st_mtime_ns, sorted(p.name for p in db.parent.iterdir()))
    _export(f"sqlite:///{db}", tmp_path / "bundle")
    assert (_sha(db), db.stat().st_mtime_ns, sorted(p.name for p in db.parent.iterdir())) == before
    # A reader opened with mode=ro cannot write, whatever it tries.
    store = open_source(f"sqlite:///{db}")
    with pytest.raises(Exception, match="readonly"), store._db.engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE trackport_probe (x)")
    store.close()


def _histories(store, runs) -> dict[str, pa.Table]:
    out = {}
    for run in runs:
        batches = list(store.iter_metric_batches(run))
        assert all(b.schema == METRIC_SCHEMA for b in batches)
        out[run.run_id] = pa.Table.from_batches(batches, schema=METRIC_SCHEMA)
    return out


def _plain(table: pa.Table) -> list[tuple]:
    cols = [table.column(i).to_pylist() for i in range(4)]
    return [(k, s, t, "nan" if math.isnan(v) else v) for k, s, t, v in zip(*cols)]


def test_metric_order_across_batches_and_readers(sample_sqlite):
    """Points sharing a step are ordered by (timestamp, value) even when a batch boundary
    falls among them; ADBC and sqlite3 read the same points in the same order."""
    store = open_source(sample_sqlite)
    runs = [r for e in store.list_experiments(ALL) for r in store.iter_runs(e, ALL)]
    reference = _histories(store, runs)
    for table in reference.values():
        rows = _plain(table)
        keyed = [(k, s, t, (1, 0) if v == "nan" else (0, v)) for k, s, t, v in rows]
        assert [r[:3] for r in keyed] == sorted(r[:3] for r in keyed)
    assert sum(t.num_rows for t in reference.values()) == SAMPLE_COUNTS["metric_points"]
    for batch_rows in (1, 2, 3, 7):
        small = open_source(sample_sqlite, config=TransferConfig(metric_batch_rows=batch_rows))
        for adbc in (small._adbc, None):
            small._adbc = adbc  # the cached reader, replaced for this store alone
            got = _histories(small, runs)
            assert {k: _plain(v) for k, v in got.items()} == {k: _plain(v) for k, v in reference.items()}
        small._index_order = False  # the database sorts everything
        got = _histories(small, runs)
        assert {k: _plain(v) for k, v in got.items()} == {k: _plain(v) for k, v in reference.items()}
        small.close()


def test_filter_on_the_direct_reader(sample_sqlite):
    store = open_source(sample_sqlite)
    everything = [r.run_name for e in store.list_experiments(ALL) for r in runs_of(store, e, ALL)]
    sel = Selection(include_deleted=True, filter="attributes.run_name = 'child'")
    assert [r.run_name for e in store.list_experiments(sel) for r in runs_of(store, e, sel)] == ["child"]
    sel = Selection(include_deleted=True, filter="metrics.loss >= 0")
    matched = [r.run_name for e in store.list_experiments(sel) for r in runs_of(store, e, sel)]
    assert "parent run" in matched and len(matched) < len(everything)
    with pytest.raises(FilterError, match="--filter 'no such ===', position 1: unknown attribute 'no'"):
        list(runs_of(store, next(iter(store.list_experiments(ALL))), Selection(filter="no such ===")))


def test_server_database_urls(tmp_path):
    with pytest.raises(FatalError) as refused:  # a sink since issue 17: unreachable here
        open_sink("postgresql://someone:secret@127.0.0.1:1/mlflow")
    assert "secret" not in str(refused.value) and "\n" not in str(refused.value)
    # Unreachable (or no driver): a clear error that never shows the password.
    with pytest.raises(BadInputError) as info:
        open_source("postgresql://someone:secret@127.0.0.1:1/mlflow?artifacts_destination=/x")
    assert "secret" not in str(info.value)
    assert split_uri_options("sqlite:///a.db?artifacts_destination=/srv/a") == ("sqlite:///a.db", "/srv/a")
    assert split_uri_options("postgresql://h/db?sslmode=require&artifacts_destination=%2Fx") == (
        "postgresql://h/db?sslmode=require", "/x"
    )


def test_evaluation_data_a_database_holds_is_declared_not_read(tmp_path, monkeypatch):
    """The direct reader does not read evaluation datasets or scorers yet: a database holding
    them says so before anything is written, and the summary records it (nothing left out
    silently). Its traces are read (tests/test_db_traces.py): exported, not declared."""
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's client puts a run's artifacts under ./mlruns

    uri = f"sqlite:///{tmp_path / 'traced.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        # Not mlflow.set_experiment: it sets the process's active experiment (and
        # MLFLOW_EXPERIMENT_ID) for every later test; the environment is restored here.
        experiment_id = mlflow.MlflowClient(uri).create_experiment("traced")
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.log_param("p", "1")
        with mlflow.start_span("answer") as span:
            span.set_inputs({"q": "?"})
        from mlflow.genai.datasets import create_dataset
        from mlflow.genai.scorers import Guidelines

        create_dataset(name="qa", experiment_id=[experiment_id]).merge_records([{"inputs": {"q": "?"}}])
        Guidelines(name="polite", guidelines="Be polite").register(experiment_id=experiment_id)
    finally:
        mlflow.set_tracking_uri(None)
    said = CliRunner().invoke(cli, ["export", uri, str(tmp_path / "bundle")])
    assert said.exit_code == 0, said.output
    for what in ("evaluation datasets", "scorers"):
        assert f"not read from the source: {what}: the database holds 1," in said.stderr, said.stderr
    assert "traces: the database holds" not in said.stderr
    result = CliRunner().invoke(cli, ["export", uri, str(tmp_path / "bundle2"), "--json"])
    summary = json.loads(result.stdout)
    assert any(line.startswith("scorers: the database holds 1,") for line in summary["planned_losses"]), summary
    assert summary["counts"]["traces"]["done"] == 1, summary["counts"]
