"""A bundle restored straight into a tracking server's PostgreSQL or MariaDB database (issue
17, items 3 and 4; stores/serverdb), against real database servers (tests/dbservers.py) and
real `mlflow server`s: into databases `mlflow db upgrade` made, then served and compared
through REST; the server's next experiment gets a new id; refused while the server runs
unless --server-stopped; a restore killed half-way resumes with nothing duplicated; a wrong
schema revision, none at all, a wrong password, an unreachable server and a missing database
each refused in one line with its exit code, the password never shown; logged models and the
registry (the model sample) copied in and read back equal.

`mlflow db upgrade` takes 15-30 s per database here, so it runs once per backend, into a
template database that each test's database is copied from (PostgreSQL: CREATE DATABASE ...
TEMPLATE; MariaDB: the template's tables re-made from SHOW CREATE TABLE, with their rows)."""
from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from dbservers import PASSWORD
from memory_source import MemorySource
from servers import MlflowServer, free_port, start_all
from trackport.cli.main import cli
from trackport.domain import ACTIVE, DELETED, METRIC_SCHEMA, Experiment, Run
from trackport.errors import ExitCode
from trackport.opening import open_bundle_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer import transfer

BACKENDS = ("postgresql", "mariadb")
ALL = Selection(include_deleted=True)
KILL_RUNS, KILL_POINTS = 24, 6_000  # per run: enough that a kill lands between commits


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


class Databases:
    """A database server of the session and its MLflow template database."""

    def __init__(self, name: str, server) -> None:
        self.name, self.server = name, server
        self.template = server.create_database("tmpl")

    def fresh(self) -> str:
        """A new database holding what `mlflow db upgrade` made (the template's copy)."""
        if self.name == "postgresql":
            self.server._made += 1
            name = f"r_{self.server._made}_{os.getpid()}"
            self.server._admin(f"CREATE DATABASE {name} TEMPLATE {self.template}")
            return name
        name = self.server.create_database("r")
        conn = self.server.connect()
        with conn, conn.cursor() as cur:
            cur.execute("SET FOREIGN_KEY_CHECKS = 0")
            cur.execute(f"SHOW TABLES FROM {self.template}")
            for (table,) in cur.fetchall():
                cur.execute(f"SHOW CREATE TABLE {self.template}.`{table}`")
                statement = cur.fetchone()[1]
                cur.execute(f"USE {name}")
                cur.execute(statement)
                cur.execute(f"INSERT INTO {name}.`{table}` SELECT * FROM {self.template}.`{table}`")
        return name

    def uri(self, database: str, destination: Path | None = None, **kw) -> str:
        uri = self.server.url(database, **kw)
        return f"{uri}?artifacts_destination={destination}" if destination is not None else uri

    def rows(self, database: str, sql: str) -> list[tuple]:
        conn = self.server.connect(database)
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return list(cur.fetchall())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def databases(postgres_server, mariadb_server) -> dict[str, Databases]:
    """Both backends' template databases, upgraded by MLflow at once."""
    found = {"postgresql": Databases("postgresql", postgres_server), "mariadb": Databases("mariadb", mariadb_server)}
    upgrades = [
        subprocess.Popen([sys.executable, "-m", "mlflow", "db", "upgrade", d.uri(d.template)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for d in found.values()
    ]
    for upgrade in upgrades:
        _, err = upgrade.communicate(timeout=300)
        assert upgrade.returncode == 0, err[-2000:]
    return found


def _kill_source() -> MemorySource:
    """KILL_RUNS runs of KILL_POINTS points (NaN, ±inf, a repeated step) and a file each."""
    rng = random.Random(17)
    base = 1_700_000_000_000
    experiment = Experiment("7", "killed restore", creation_time=base, last_update_time=base)
    runs, metrics, artifacts = [], {}, {}
    for i in range(KILL_RUNS):
        run_id = f"{rng.getrandbits(128):032x}"
        deleted = i == KILL_RUNS - 1
        runs.append(Run(
            run_id=run_id, experiment_id="7", run_name=f"run {i}", user_id="killer", status="FINISHED",
            start_time=base + i, end_time=base + 10_000 + i, lifecycle_stage=DELETED if deleted else ACTIVE,
            deleted_time=base + 20_000 if deleted else None, params={"i": str(i)}, tags={"mlflow.runName": f"run {i}"},
        ))
        half = KILL_POINTS // 2
        values = [math.nan if j % 501 == 0 else math.inf if j % 777 == 0 else rng.random() for j in range(half)]
        metrics[run_id] = pa.RecordBatch.from_arrays([
            pa.array(["acc"] * half + ["loss"] * half),
            pa.array(list(range(half)) * 2, pa.int64()),
            pa.array([base + j for j in range(half)] * 2, pa.int64()),
            pa.array(values + values[::-1], pa.float64()),
        ], schema=METRIC_SCHEMA)
        artifacts[run_id] = {"out/model.bin": rng.randbytes(1_000)}
    return MemorySource([experiment], runs, metrics, artifacts, uri="synthetic:killed")


@pytest.fixture(scope="module")
def kill_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill-bundle") / "bundle"
    summary = transfer(_kill_source(), open_bundle_sink(str(path)), ALL)
    assert summary.failed == 0, summary.failures
    return path


def _one_line(result) -> str:
    message = result.output.strip()
    assert "\n" not in message and PASSWORD not in message, message
    return message


def test_restored_databases_are_served(databases, sample_bundle, tmp_path):
    """Both backends: imported, served by a server started on each, equal through REST; the
    server's next experiment takes a new id; refused while served, unless --server-stopped."""
    made = {}
    for name, d in databases.items():
        database = d.fresh()
        destination = tmp_path / name / "mlartifacts"
        destination.parent.mkdir()
        done = invoke("import", str(sample_bundle), d.uri(database, destination))
        assert done.exit_code == 0, done.output
        made[name] = (database, destination)
    with open_source(str(sample_bundle)) as bundle:
        source_ids = {e.experiment_id for e in bundle.list_experiments(ALL)}
    for name, d in databases.items():
        ids = {str(i) for (i,) in d.rows(made[name][0], "SELECT experiment_id FROM experiments")}
        assert ids == source_ids, name  # experiment ids kept
    servers = start_all([
        MlflowServer(tmp_path / name, backend_store_uri=d.uri(made[name][0])) for name, d in databases.items()
    ])
    try:
        for server, (name, d) in zip(servers, databases.items()):
            database, destination = made[name]
            runs_before = d.rows(database, "SELECT count(*) FROM runs")
            refused = invoke("import", str(sample_bundle), d.uri(database, destination))
            assert refused.exit_code == ExitCode.BAD_INPUT, refused.output
            message = _one_line(refused)
            assert "in use" in message and "--server-stopped" in message and "user trackport" in message, message
            assert d.rows(database, "SELECT count(*) FROM runs") == runs_before

            verified = invoke("verify", str(sample_bundle), server.url, "--level", "full")
            assert verified.exit_code == 0, (name, verified.output)

            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=server.url)
            new_id = client.create_experiment(f"after restore {name}")
            assert int(new_id) == max(int(i) for i in source_ids) + 1, (name, new_id, source_ids)
            run = client.create_run(new_id)
            client.log_metric(run.info.run_id, "m", 1.5)
            client.set_terminated(run.info.run_id)
            assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}

            again = invoke("import", str(sample_bundle), d.uri(database, destination), "--server-stopped", "--json")
            assert again.exit_code == 0, again.output
            assert d.rows(database, "SELECT count(*) FROM runs")[0][0] == runs_before[0][0] + 1  # nothing twice
    finally:
        for server in servers:
            server.stop()


def _count(d: Databases, database: str, table: str) -> int:
    try:
        return d.rows(database, f"SELECT count(*) FROM {table}")[0][0]
    except Exception:  # noqa: BLE001 -- mid-connection while the server is busy: ask again
        return 0


def test_restore_killed_half_way_resumes(databases, kill_bundle, tmp_path):
    """SIGKILLed once some runs are committed, run again: every run once, every point once,
    every file in place, equal to the bundle (read back directly)."""
    from shutil import which

    script = which("trackport")
    assert script
    for name, d in databases.items():
        database = d.fresh()
        destination = tmp_path / name / "mlartifacts"
        destination.parent.mkdir()
        # --server-stopped: this test's own connection, counting the runs, is another session.
        command = [script, "import", str(kill_bundle), d.uri(database, destination), "--server-stopped", "--workers", "2"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while _count(d, database, "runs") < 3 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        committed = _count(d, database, "runs")
        assert 3 <= committed < KILL_RUNS, (name, committed, process.stderr.read()[-2000:])
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, (name, resumed.stderr[-3000:])
        assert _count(d, database, "runs") == KILL_RUNS
        assert _count(d, database, "metrics") == KILL_RUNS * KILL_POINTS  # nothing twice, nothing lost
        assert len([p for p in destination.rglob("*") if p.is_file()]) == KILL_RUNS
        verified = invoke("verify", str(kill_bundle), d.uri(database, destination), "--level", "full")
        assert verified.exit_code == 0, (name, verified.output)


def test_refusals_are_one_line(databases, sample_bundle):
    """Wrong schema revision, no schema, wrong password, unreachable, missing database: one
    line each, the right exit code, nothing written."""
    for name, d in databases.items():
        database = d.fresh()
        synced = invoke("sync", str(sample_bundle), d.uri(database))
        # (the losses the plan declares come first; the refusal is the one error line)
        assert synced.exit_code == ExitCode.BAD_INPUT, synced.output
        assert [line for line in synced.output.splitlines() if "cannot be synced into" in line] == [
            synced.output.strip().splitlines()[-1]
        ] and PASSWORD not in synced.output

        conn = d.server.connect(database)
        with conn:
            cur = conn.cursor()
            cur.execute("UPDATE alembic_version SET version_num = 'abc123def456'")
            cur.close()
        wrong = invoke("import", str(sample_bundle), d.uri(database))
        assert wrong.exit_code == ExitCode.BAD_INPUT, wrong.output
        message = _one_line(wrong)
        assert "revision abc123def456" in message and f"mlflow db upgrade {d.server.url(database, password='***')}" in message
        assert d.rows(database, "SELECT count(*) FROM experiments") == [(0,)]

        empty = d.server.create_database("empty")
        bare = invoke("import", str(sample_bundle), d.uri(empty))
        assert bare.exit_code == ExitCode.BAD_INPUT and "holds no MLflow schema" in _one_line(bare), bare.output

        password = invoke("import", str(sample_bundle), d.uri(database, password="not-" + PASSWORD))
        assert password.exit_code == ExitCode.AUTH and "refused the login" in _one_line(password), password.output

        down = invoke("import", str(sample_bundle), d.uri(database, port=free_port()))
        assert down.exit_code == ExitCode.UNREACHABLE and "cannot reach" in _one_line(down), down.output

        missing = invoke("copy", str(sample_bundle), d.uri("no_such_database"))
        assert missing.exit_code == ExitCode.BAD_INPUT and "no_such_database" in _one_line(missing), missing.output



def test_logged_models_and_registry(databases, model_sample_sqlite, tmp_path):
    """Logged models (ids kept, their files) and the registry (version numbers kept) through
    the rows the sqlite sink shares; read back directly, equal to the source."""
    source = model_sample_sqlite.uri
    for name, d in databases.items():
        database = d.fresh()
        (tmp_path / name).mkdir()
        target = d.uri(database, tmp_path / name / "mlartifacts")
        copied = invoke("copy", source, target, "--include-deleted")
        assert copied.exit_code == 0, (name, copied.output)
        verified = invoke("verify", source, target, "--level", "full", "--include-deleted")
        assert verified.exit_code == 0, (name, verified.output)
        ids = {m for (m,) in d.rows(database, "SELECT model_id FROM logged_models")}
        assert {model_sample_sqlite.model_id, model_sample_sqlite.model2_id} <= ids, name
        assert d.rows(database, "SELECT count(*) FROM model_versions WHERE name = 'churn'")[0][0] >= 3, name


# ---------------------------------------------------------------- --bulk-load (PostgreSQL)

_DEFINITIONS = (
    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'metrics'::regclass"
    " UNION ALL SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
    " WHERE indrelid = 'metrics'::regclass ORDER BY 1"
)


def _tables(d: Databases, database: str) -> dict[str, list]:
    """Every MLflow table's rows, sorted (their text forms); the ids each restore makes anew
    (datasets' and inputs' uuids) as <id>."""
    names = [t for (t,) in d.rows(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    made = d.rows(database, "SELECT dataset_uuid FROM datasets UNION SELECT input_uuid FROM inputs")
    tables = {}
    for table in names:
        rows = [repr(row) for row in d.rows(database, f"SELECT * FROM {table}")]
        for (uuid,) in made:
            rows = [row.replace(uuid, "<id>") for row in rows]
        tables[table] = sorted(rows)
    return tables


def test_bulk_load_equals_run_by_run(databases, sample_bundle, tmp_path):
    """The same bundle restored run by run and with --bulk-load: the same rows in every
    table, the metrics table's keys and indexes as MLflow made them; served, equal the source."""
    d = databases["postgresql"]
    made = {}
    for mode in ("runs", "bulk"):
        database = d.fresh()
        destination = tmp_path / mode / "mlartifacts"
        destination.parent.mkdir()
        done = invoke("import", str(sample_bundle), d.uri(database, destination), *(["--bulk-load"] if mode == "bulk" else []))
        assert done.exit_code == 0, done.output
        made[mode] = database, destination
    assert "keeps nothing and starts again" in done.output
    assert _tables(d, made["bulk"][0]) == _tables(d, made["runs"][0])
    assert d.rows(made["bulk"][0], _DEFINITIONS) == d.rows(d.template, _DEFINITIONS)
    database, destination = made["bulk"]
    server = MlflowServer(tmp_path / "served", backend_store_uri=d.uri(database), artifacts_destination=str(destination))
    server.start().wait_ready()
    try:
        verified = invoke("verify", str(sample_bundle), server.url, "--level", "full")
    finally:
        server.stop()
    assert verified.exit_code == 0, verified.output


def _metrics_locked(d: Databases, database: str) -> bool:
    """Whether another session holds the metrics table's exclusive lock (a bulk load has begun)."""
    try:
        return bool(d.rows(database, "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                                     " WHERE c.relname = 'metrics' AND l.mode = 'AccessExclusiveLock' AND l.granted"))
    except Exception:  # noqa: BLE001
        return False


def test_bulk_load_killed_keeps_nothing(databases, kill_bundle, tmp_path):
    """SIGKILLed during a bulk load: no run, the keys and indexes as before, no artifact
    file; the same command again restores everything, equal to the bundle."""
    from shutil import which

    d = databases["postgresql"]
    database = d.fresh()
    destination = tmp_path / "mlartifacts"
    command = [which("trackport"), "import", str(kill_bundle), d.uri(database, destination), "--server-stopped",
               "--bulk-load", "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _metrics_locked(d, database) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.0)  # some runs loaded, not yet committed
        assert process.poll() is None, process.stderr.read()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert _count(d, database, "runs") == 0 and _count(d, database, "metrics") == 0
    assert d.rows(database, _DEFINITIONS) == d.rows(d.template, _DEFINITIONS)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _count(d, database, "runs") == KILL_RUNS and _count(d, database, "metrics") == KILL_RUNS * KILL_POINTS
    assert len([p for p in destination.rglob("*") if p.is_file()]) == KILL_RUNS  # the killed load's files removed
    verified = invoke("verify", str(kill_bundle), d.uri(database, destination), "--level", "full")
    assert verified.exit_code == 0, verified.output


def test_bulk_load_refusals(databases, sample_bundle, tmp_path):
    """Refused in one line, exit 3, nothing written: MariaDB, a database holding runs, a
    target that is no database."""
    maria = databases["mariadb"]
    database = maria.fresh()
    refused = invoke("import", str(sample_bundle), maria.uri(database), "--bulk-load")
    assert refused.exit_code == ExitCode.BAD_INPUT and "PostgreSQL only" in _one_line(refused), refused.output
    assert maria.rows(database, "SELECT count(*) FROM runs") == [(0,)]

    d = databases["postgresql"]
    database = d.fresh()
    conn = d.server.connect(database)
    with conn:
        conn.execute("INSERT INTO experiments (experiment_id, name, lifecycle_stage, creation_time, last_update_time)"
                     " VALUES (1, 'held', 'active', 0, 0)")
        conn.execute("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status,"
                     " start_time, source_version, lifecycle_stage, artifact_uri, experiment_id)"
                     " VALUES ('a' || repeat('0', 31), '', 'UNKNOWN', '', '', 'u', 'FINISHED', 0, '', 'active', '', 1)")
    held = invoke("import", str(sample_bundle), d.uri(database), "--bulk-load")
    # (the last line: MLflow's own log lines come first where this process builds its schema template)
    assert held.exit_code == ExitCode.BAD_INPUT and "holds no runs" in held.output.strip().splitlines()[-1], held.output
    assert d.rows(database, "SELECT count(*) FROM runs") == [(1,)]

    bundle = invoke("import", str(sample_bundle), str(tmp_path / "store.db"), "--bulk-load")
    assert bundle.exit_code == ExitCode.BAD_INPUT and "--bulk-load" in _one_line(bundle), bundle.output
