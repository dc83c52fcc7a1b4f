"""A bundle restored straight into a tracking server's sqlite database (issue 17, item 3),
against a real `mlflow server` (tests/servers.py: its database is workdir/mlflow.db, its
artifacts destination workdir/mlartifacts): filled through MLflow's client and stopped, the
sample bundle imported with ?artifacts_destination=, the server started again on both and
serving everything; refused while a server runs, unless --server-stopped; runs without
artifacts go in without the parameter, runs with artifacts are refused by name with it
missing; a database `mlflow db upgrade` made that no server has used yet."""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from servers import MlflowServer
from trackport.cli.main import cli
from trackport.errors import ExitCode
from trackport.samples.sample_store import SAMPLE_COUNTS
from trackport.stores.sqlite.in_use import servers_using

DB = "mlflow.db"
ARTIFACTS = "mlartifacts"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def target(workdir: Path, *, destination: bool = True) -> str:
    uri = f"sqlite:///{workdir / DB}"
    return f"{uri}?artifacts_destination={workdir / ARTIFACTS}" if destination else uri


def tree(workdir: Path) -> dict[str, str]:
    """Every file under workdir (the database, its artifacts, what lies beside them) and its sha256."""
    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(workdir.rglob("*")) if p.is_file() and p.name != "server.log"
    }


def rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
        return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Path:
    """A server's database and artifacts destination, filled through MLflow's client (a run
    with a param, a metric and an artifact; a run with neither artifact nor param), the
    server stopped. Copy it before writing."""
    from mlflow.tracking import MlflowClient

    workdir = tmp_path_factory.mktemp("server") / "srv"
    server = MlflowServer(workdir).start().wait_ready()
    try:
        client = MlflowClient(tracking_uri=server.url)
        exp = client.create_experiment("server-own")
        with_file = client.create_run(exp, run_name="with-file")
        client.log_param(with_file.info.run_id, "alpha", "0.5")
        client.log_metric(with_file.info.run_id, "loss", 0.25, step=3)
        note = workdir.parent / "note.txt"
        note.write_text("the server's own artifact\n")
        client.log_artifact(with_file.info.run_id, str(note), "notes")
        client.set_terminated(with_file.info.run_id)
        bare = client.create_run(exp, run_name="no-files")
        client.log_metric(bare.info.run_id, "loss", 1.0)
        client.set_terminated(bare.info.run_id)
    finally:
        server.stop()
    assert rows(workdir / DB, "SELECT artifact_location FROM experiments WHERE name = 'server-own'")[0][0].startswith(
        "mlflow-artifacts:/"
    )
    return workdir


@pytest.fixture
def workdir(filled, tmp_path) -> Path:
    copy = tmp_path / "srv"
    shutil.copytree(filled, copy)
    return copy


def served_runs(url: str) -> dict[str, object]:
    """Every run the server lists (deleted ones too), by run name."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=1000)
    return {r.info.run_name: r for r in runs}


def test_restored_database_is_served_by_its_server(workdir, sample_bundle):
    own_files = {p: d for p, d in tree(workdir).items() if p != DB}
    done = invoke("import", str(sample_bundle), target(workdir))
    assert done.exit_code == 0, done.output
    # New experiments are the server's own kind, laid out as its proxy serves them:
    # mlflow-artifacts:/<experiment>/<run>/artifacts/<path> is <destination>/<experiment>/<run>/artifacts/<path>.
    for exp_id, location in rows(workdir / DB, "SELECT experiment_id, artifact_location FROM experiments"):
        assert location == f"mlflow-artifacts:/{exp_id}"
    for run_id, exp_id, uri in rows(workdir / DB, "SELECT run_uuid, experiment_id, artifact_uri FROM runs"):
        assert uri == f"mlflow-artifacts:/{exp_id}/{run_id}/artifacts"
    files = [p for p in tree(workdir) if p.startswith(ARTIFACTS + "/") and p not in own_files]
    assert len(files) == SAMPLE_COUNTS["artifact_files"]
    for path in files:
        _, exp_id, run_id, folder, *_ = path.split("/")
        assert folder == "artifacts" and rows(workdir / DB, f"SELECT experiment_id FROM runs WHERE run_uuid = '{run_id}'") == [
            (int(exp_id),)
        ]
    assert all(tree(workdir)[p] == d for p, d in own_files.items())  # what the server wrote is untouched

    server = MlflowServer(workdir).start().wait_ready()
    try:
        before = tree(workdir)
        refused = invoke("import", str(sample_bundle), target(workdir))
        assert refused.exit_code == ExitCode.BAD_INPUT, refused.output
        message = refused.output.strip()
        assert "\n" not in message and "--server-stopped" in message and f"pid {server.process.pid}" in message
        assert tree(workdir) == before  # refused before anything was written

        verified = invoke("verify", str(sample_bundle), server.url, "--level", "full")
        assert verified.exit_code == 0, verified.output
        runs = served_runs(server.url)
        assert len(runs) == SAMPLE_COUNTS["runs"] + 2
        own = runs["with-file"]
        assert own.data.params == {"alpha": "0.5"} and own.data.metrics == {"loss": 0.25}
        from mlflow.tracking import MlflowClient

        fetched = MlflowClient(tracking_uri=server.url).download_artifacts(
            own.info.run_id, "notes/note.txt", str(workdir.parent / "download")
        )
        assert Path(fetched).read_text() == "the server's own artifact\n"
    finally:
        server.stop()


def test_runs_without_artifacts_need_no_destination(workdir, sample_bundle):
    before = tree(workdir)
    result = invoke("copy", str(sample_bundle), target(workdir, destination=False))
    assert result.exit_code == ExitCode.UNITS_FAILED, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    refused = [line for line in failed if "?artifacts_destination=" in line]
    assert refused and all("to the target URI" in line for line in refused)
    imported = {r for (r,) in rows(workdir / DB, "SELECT run_uuid FROM runs")}
    assert len(imported) > 2  # the sample's runs without files are in
    for line in refused:  # the refused runs left nothing: no rows, no folder
        run_id = line.split("(")[1].split(")")[0]
        assert run_id not in imported
        assert not list((workdir / ARTIFACTS).rglob(run_id))
    assert {p for p in tree(workdir) if p.startswith(ARTIFACTS)} == {p for p in before if p.startswith(ARTIFACTS)}

    # The same transfer with the destination finishes the rest; the direct reader sees it all.
    again = invoke("copy", str(sample_bundle), target(workdir))
    assert again.exit_code == 0, again.output
    verified = invoke("verify", str(sample_bundle), target(workdir), "--level", "full")
    assert verified.exit_code == 0, verified.output


def test_database_no_server_has_used_yet_then_copy_into_it_while_served(filled, tmp_path, sample_bundle):
    """Imported into a database `mlflow db upgrade` made (its destination made too), served by a
    server started on it; then another server's database copied into it while that server runs
    (--server-stopped), the rows served at once."""
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    upgrade = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{workdir / DB}"],
        capture_output=True, text=True, timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    done = invoke("import", str(sample_bundle), target(workdir))
    assert done.exit_code == 0, done.output
    assert (workdir / ARTIFACTS).is_dir()
    server = MlflowServer(workdir).start().wait_ready()
    try:
        served_runs(server.url)  # the app's worker opens the database on its first request
        users = servers_using(workdir / DB)
        assert not servers_using(filled / DB)
        assert any(f"pid {server.process.pid} " in u for u in users)  # its command line names the database
        assert len(users) == 2, users  # and its app's worker (uvicorn), whose open files show it
        source = target(filled)
        refused = invoke("copy", source, target(workdir))
        assert refused.exit_code == ExitCode.BAD_INPUT and "--server-stopped" in refused.output
        copied = invoke("copy", source, target(workdir), "--server-stopped")
        assert copied.exit_code == 0, copied.output
        for origin in (str(sample_bundle), source):
            verified = invoke("verify", origin, server.url, "--level", "full")
            assert verified.exit_code == 0, verified.output
    finally:
        server.stop()


def _sleeper(cwd: Path, *args: str) -> subprocess.Popen:
    """A live process whose command line reads like an MLflow server's (it only sleeps)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args], cwd=cwd)


def test_server_found_by_its_command_line(tmp_path):
    db = tmp_path / "srv" / DB
    db.parent.mkdir()
    db.write_bytes(b"")
    other = tmp_path / "other"
    other.mkdir()
    cases = [
        (db.parent, ["mlflow", "server", "--backend-store-uri", f"sqlite:///{DB}"], True),  # relative to its cwd
        (other, ["mlflow", "server", "--backend-store-uri", f"sqlite:///{DB}"], False),  # another file
        (db.parent, ["mlflow", "ui"], True),  # MLflow's default backend, sqlite:///mlflow.db
        (other, ["mlflow", "server", f"--backend-store-uri=sqlite:///{db}"], True),
        (other, ["not-mlflow", "server", f"--backend-store-uri=sqlite:///{db}"], False),  # not a server
        (db.parent, ["mlflow", "gc", "--backend-store-uri", f"sqlite:///{db}"], False),
    ]
    processes = [(_sleeper(cwd, *args), args, expected) for cwd, args, expected in cases]
    try:
        found = servers_using(db)
        for process, args, expected in processes:
            assert any(f"pid {process.pid} " in entry for entry in found) == expected, (args, found)
    finally:
        for process, _args, _expected in processes:
            process.kill()
            process.wait()
    assert servers_using(db) == []
