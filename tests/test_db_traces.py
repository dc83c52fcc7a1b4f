"""MLflow 3 traces read from a tracking server's database directly (stores/mlflow_db/traces.py):
the units equal the ones the same server's REST API gives, and a backup made through the
database restores into a fresh server as MLflow's client sees the source.

The traces are made by MLflow's own client on a real `mlflow server` (sqlite, proxied
artifacts; trackport.samples.trace_store): two with their spans in the server's tracking
store, one with its spans in the trace's artifact, assessments, links to a run and a logged
model. A PostgreSQL-backed server gets the same equality check.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_traces import _same, _traces

from servers import MlflowServer
from trackport.cli.main import cli
from trackport.kinds import Unit
from trackport.opening import open_source
from trackport.samples.trace_store import EXPERIMENT, TRACE_NAMES
from trackport.stores.base import TRACES_BEFORE, NotSelected, Selection, Unreadable
from trackport.stores.mlflow_db import traces as db_traces

EVERYTHING = Selection(include_deleted=True)


def _make_traces(url: str) -> dict[str, str]:
    """The sample traces, made on the server by MLflow's client in a process of its own; their ids."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    done = subprocess.run([sys.executable, "-m", "trackport.samples.trace_store", url], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def servers(server_pool):
    with server_pool.taken("source", "imported") as servers:
        yield servers


@pytest.fixture(scope="module")
def sample(servers) -> dict[str, str]:
    return _make_traces(servers["source"].url)


def _db_uri(server: MlflowServer, destination: bool = True) -> str:
    uri = f"sqlite:///{server.workdir / 'mlflow.db'}"
    return f"{uri}?artifacts_destination={server.workdir / 'mlartifacts'}" if destination else uri


def _listing(uri: str, selection: Selection | None = None) -> list:
    """The sample experiment's trace listing of the store at uri (units, Unreadable, NotSelected)."""
    with open_source(uri) as source:
        experiment = next(e for e in source.list_experiments(EVERYTHING) if e.name == EXPERIMENT)
        listed = source.iter_traces(experiment) if selection is None else source.iter_traces(experiment, selection)
        return list(listed)


def _units(uri: str) -> dict[str, tuple[dict, dict]]:
    """trace id -> (refs, body) of every trace unit at uri; anything else fails."""
    listed = _listing(uri)
    assert all(isinstance(u, Unit) for u in listed), [u for u in listed if not isinstance(u, Unit)]
    return {u.unit_id: (u.refs, u.body) for u in listed}


def _assert_same_units(db_uri: str, rest_url: str, sample: dict[str, str]) -> None:
    direct, rest = _units(db_uri), _units(rest_url)
    assert sorted(direct) == sorted(rest) == sorted(sample[n] for n in TRACE_NAMES)
    for trace_id, (refs, body) in rest.items():
        assert direct[trace_id][0] == refs, trace_id
        for key in body:  # field by field first, so that a failure names the field
            assert direct[trace_id][1][key] == body[key], f"{trace_id}: {key} differs"
        assert direct[trace_id][1] == body, trace_id


def test_the_database_gives_the_rest_units(servers, sample):
    """The key check: every trace's refs and body as the server's REST API gives them,
    spans from the spans table and from the trace artifact alike."""
    _assert_same_units(_db_uri(servers["source"]), servers["source"].url, sample)
    direct = _units(_db_uri(servers["source"]))
    answer, fails, legacy = (direct[sample[n]] for n in TRACE_NAMES)
    assert answer[1]["spans_location"] == fails[1]["spans_location"] == "TRACKING_STORE"
    assert legacy[1]["spans_location"] is None
    assert (len(answer[1]["spans"]), len(answer[1]["assessments"]), len(legacy[1]["spans"])) == (4, 3, 2)
    assert answer[0]["run"] == sample["run"] and fails[0]["logged_model"] == sample["model"]


def test_pages_of_one_trace_give_the_same_units_in_request_order(servers, sample, monkeypatch):
    """The listing pages through trace_info by (request time, id): a page of one trace
    misses none and repeats none."""
    whole = _listing(_db_uri(servers["source"]))
    monkeypatch.setattr(db_traces, "TRACE_PAGE", 1)
    paged = _listing(_db_uri(servers["source"]))
    assert [u.unit_id for u in paged] == [u.unit_id for u in whole]
    assert [u.body for u in paged] == [u.body for u in whole]
    times = [u.body["request_time"] for u in paged]
    assert times == sorted(times) and len(paged) == 3


def test_traces_since_leaves_the_older_ones_not_selected(servers, sample):
    units = _units(_db_uri(servers["source"]))
    since = units[sample["fails"]][1]["request_time"]
    listed = {u.unit_id if isinstance(u, Unit) else u.source_id: u
              for u in _listing(_db_uri(servers["source"]), Selection(traces_since=since))}
    assert isinstance(listed[sample["answer"]], NotSelected) and listed[sample["answer"]].reason == TRACES_BEFORE
    assert listed[sample["answer"]].name == "answer"
    assert isinstance(listed[sample["fails"]], Unit) and isinstance(listed[sample["legacy"]], Unit)


def test_artifact_spans_the_source_cannot_open_are_unreadable_with_the_reason(servers, sample, tmp_path):
    """Without the server's artifacts directory, the trace whose spans are in its artifact is
    unreadable (one line saying what to add); the others are read. An export records it
    failed with that reason (the others fail too: their run and logged model have files there)."""
    listed = _listing(_db_uri(servers["source"], destination=False))
    unreadable = [u for u in listed if isinstance(u, Unreadable)]
    assert [u.source_id for u in unreadable] == [sample["legacy"]]
    reason = unreadable[0].reason
    assert "artifacts_destination" in reason and f"trace {sample['legacy']}" in reason and "\n" not in reason
    assert sum(isinstance(u, Unit) for u in listed) == 2
    result = CliRunner().invoke(cli, ["export", _db_uri(servers["source"], destination=False), str(tmp_path / "b"), "--json"])
    summary = json.loads(result.stdout)
    assert result.exit_code != 0 and summary["counts"]["traces"]["failed"] == 3, summary["counts"]
    assert {"kind": "trace", "name": "legacy", "reason": reason, "source_id": sample["legacy"]} in summary["failures"]


def test_trace_filter_is_refused_from_a_database(servers, sample, tmp_path):
    result = CliRunner().invoke(cli, ["export", _db_uri(servers["source"]), str(tmp_path / "b"),
                                      "--trace-filter", "trace.status = 'OK'"])
    assert result.exit_code == 3 and "--trace-filter is MLflow's trace search" in result.stderr, result.output


def test_a_backup_through_the_database_restores_what_the_client_sees(servers, sample, tmp_path):
    """export <database> -> bundle -> import into a fresh server: MLflow's client sees the
    source's traces there, and verify (from the server and from its database) is clean."""
    bundle = tmp_path / "bundle"
    exported = CliRunner().invoke(cli, ["export", _db_uri(servers["source"]), str(bundle), "--json"])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["counts"]["traces"]["done"] == 3
    assert "traces: the database holds" not in exported.stderr  # no longer declared not read
    imported = CliRunner().invoke(cli, ["import", str(bundle), servers["imported"].url, "--json"])
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.stdout)["counts"]["traces"]["done"] == 3
    _same(_traces(servers["imported"].url), _traces(servers["source"].url))
    for source in (servers["source"].url, _db_uri(servers["source"])):
        verified = CliRunner().invoke(cli, ["verify", source, servers["imported"].url, "--level", "full"])
        assert verified.exit_code == 0, verified.output


@pytest.fixture(scope="module")
def postgres_backed(postgres_server, tmp_path_factory):
    """An `mlflow server` on a PostgreSQL database, with the sample traces."""
    database = postgres_server.create_database("traces")
    server = MlflowServer(tmp_path_factory.mktemp("pg-traces"), backend_store_uri=postgres_server.url(database)).start()
    try:
        server.wait_ready()
        yield server, postgres_server.url(database), _make_traces(server.url)
    finally:
        server.stop()


def test_a_postgresql_database_gives_the_rest_units(postgres_backed):
    server, uri, sample = postgres_backed
    _assert_same_units(f"{uri}?artifacts_destination={server.workdir / 'mlartifacts'}", server.url, sample)
