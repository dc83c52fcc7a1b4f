"""New local sqlite stores are copies of a schema template MLflow built once; the sink
never imports MLflow once the template exists."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from trackport.errors import BadInputError  # noqa: E402
from trackport.stores.sqlite import schema as sqlite_schema  # noqa: E402
from trackport.stores.sqlite.store import SqliteStore  # noqa: E402


def _clauses(sql: str | None) -> list[str]:
    # MLflow's own migrations write a table's constraints in no fixed order (two databases
    # it makes can differ in that alone), so a statement is compared as its set of lines.
    return sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines())


def _dump(path: Path) -> dict:
    """Schema SQL and every row of every table."""
    with sqlite3.connect(path) as con:
        schema = sorted(((kind, name, table, _clauses(sql)) for kind, name, table, sql in
                         con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")), key=str)
        rows = {
            name: sorted(con.execute(f'SELECT * FROM "{name}"').fetchall(), key=str)
            for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
    return {"schema": schema, "rows": rows, "page_size": page_size}


def test_a_new_store_is_what_mlflow_itself_creates(tmp_path):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = tmp_path / "artifacts"
    theirs = tmp_path / "mlflow-made.db"
    store = SqlAlchemyStore(f"sqlite:///{theirs}", str(root))
    expected_default_location = store._get_artifact_location(0)
    store.engine.dispose()
    ours = tmp_path / "ours" / "mlflow.db"
    SqliteStore(f"sqlite:///{ours}", create=True, artifact_root=str(root)).close()

    mine, reference = _dump(ours), _dump(theirs)
    assert mine["schema"] == reference["schema"]
    assert mine["page_size"] == sqlite_schema.PAGE_SIZE
    for table, rows in reference["rows"].items():
        if table != "experiments":
            assert mine["rows"][table] == rows, table
    (default,) = mine["rows"]["experiments"]
    (their_default,) = reference["rows"]["experiments"]
    with sqlite3.connect(ours) as con:
        columns = [row[1] for row in con.execute("PRAGMA table_info(experiments)")]
    got, want = dict(zip(columns, default)), dict(zip(columns, their_default))
    assert got["artifact_location"] == expected_default_location
    for column in ("creation_time", "last_update_time"):
        assert abs(got.pop(column) - want.pop(column)) < 600_000  # made "now", not the template's time
    got.pop("artifact_location"), want.pop("artifact_location")
    assert got == want


@pytest.mark.parametrize("root", ["relative/artifacts", "/abs/artifacts", "file:///abs/artifacts",
                                  "s3://bucket/prefix", "file:relative/artifacts"])
def test_artifact_locations_are_mlflows(root, tmp_path, monkeypatch):
    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

    monkeypatch.chdir(tmp_path)
    theirs = resolve_uri_if_local(root)
    ours = sqlite_schema.artifact_root_uri(root)
    assert ours == theirs
    experiment = sqlite_schema.experiment_artifact_location(ours, 7)
    assert experiment == append_to_uri_path(theirs, "7")
    assert sqlite_schema.append_to_uri_path(experiment, "ab" * 16, "artifacts") == append_to_uri_path(
        experiment, "ab" * 16, "artifacts")


def test_a_store_of_another_schema_revision_is_refused_untouched(tmp_path):
    db = tmp_path / "mlflow.db"
    SqliteStore(f"sqlite:///{db}", create=True).close()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    files_before = sorted(tmp_path.rglob("*"))
    with pytest.raises(BadInputError, match=r"revision f00dfeedbeef.*mlflow db upgrade"):
        SqliteStore(f"sqlite:///{db}", create=True)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(tmp_path.rglob("*")) == files_before


def test_a_damaged_template_is_built_again(tmp_path):
    home = tmp_path / "home"
    version = sqlite_schema.installed_mlflow_version()
    first = sqlite_schema.schema_template(home, version)
    first.path.write_bytes(b"not a database")
    again = sqlite_schema.schema_template(home, version)
    assert again.path == first.path
    assert again.revision == first.revision
    assert sqlite_schema.schema_revision(again.path) == first.revision
    assert [p.name for p in again.path.parent.iterdir()] == [again.path.name]  # no leftovers


def test_a_template_build_killed_long_ago_leaves_nothing(tmp_path):
    home = tmp_path / "home"
    version = sqlite_schema.installed_mlflow_version()
    killed = home / "sqlite-templates" / ".building-k1ll3d"
    killed.mkdir(parents=True)
    (killed / "half.db").write_bytes(b"x")
    os.utime(killed, (0, 0))
    template = sqlite_schema.schema_template(home, version)
    assert [p.name for p in template.path.parent.iterdir()] == [template.path.name]


def test_importing_into_sqlite_does_not_import_mlflow(tmp_path, sample_bundle):
    """Once the template exists (the session's home has it), the whole import runs
    without MLflow: its import alone costs seconds and ~200 MB."""
    SqliteStore(f"sqlite:///{tmp_path / 'warm.db'}", create=True).close()  # the template exists
    code = (
        "import json, sys\n"
        "from trackport.opening import open_bundle_source, open_sink\n"
        "from trackport.stores.base import Selection\n"
        "from trackport.transfer import transfer\n"
        f"summary = transfer(open_bundle_source({str(sample_bundle)!r}), open_sink(sys.argv[1]), "
        "Selection(include_deleted=True))\n"
        "print(json.dumps({'failed': summary.failed, 'runs': summary.counts['runs']['done'],"
        " 'mlflow': sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.'))}))\n"
    )
    target = tmp_path / "imported" / "mlflow.db"
    answer = subprocess.run([sys.executable, "-c", code, f"sqlite:///{target}"], capture_output=True, text=True,
                            env={**os.environ}, check=True)
    report = json.loads(answer.stdout.strip().splitlines()[-1])
    assert report["failed"] == 0 and report["runs"] > 0
    assert report["mlflow"] == []


def _filled_store(db: Path) -> None:
    from test_sqlite_writer import _Content, _history

    from trackport.domain import Experiment, Run

    sink = SqliteStore(f"sqlite:///{db}", create=True)
    exp = sink.put_experiment(Experiment(experiment_id="1", name="e")).target_experiment_id
    run = Run(run_id="c" * 32, experiment_id="1", run_name="r", user_id="u", status="FINISHED",
              start_time=1, end_time=2)
    assert sink.put_run(run, exp, _Content(_history(20_000, seed=3))).metric_points > 0
    sink.close()


def _writer_synchronous(sink: SqliteStore) -> int:
    return sink._writer._con.execute("PRAGMA synchronous").fetchone()[0]


def test_only_a_database_made_here_is_filled_without_fsyncs(tmp_path):
    db = tmp_path / "made" / "mlflow.db"
    marker = tmp_path / "made" / "mlflow.db.trackport" / "filling"
    sink = SqliteStore(f"sqlite:///{db}", create=True)
    assert marker.is_file() and _writer_synchronous(sink) == 0  # OFF
    sink.close()
    assert not marker.exists()
    again = SqliteStore(f"sqlite:///{db}", create=True)  # now an existing database: its owner's setting
    assert _writer_synchronous(again) == 2  # FULL, sqlite's default
    again.close()


def test_an_unfinished_fill_is_checked_then_continued(tmp_path):
    db = tmp_path / "mlflow.db"
    _filled_store(db)
    marker = tmp_path / "mlflow.db.trackport" / "filling"
    marker.touch()  # as a killed transfer leaves it
    sink = SqliteStore(f"sqlite:///{db}", create=True)
    assert _writer_synchronous(sink) == 0
    sink.close()
    assert not marker.exists()


def test_an_unfinished_fill_that_was_damaged_is_refused(tmp_path):
    db = tmp_path / "mlflow.db"
    _filled_store(db)
    (tmp_path / "mlflow.db.trackport" / "filling").touch()
    data = bytearray(db.read_bytes())
    page = sqlite_schema.PAGE_SIZE
    for start in range(len(data) - 3 * page, len(data), page):  # torn pages, as a power cut leaves them
        data[start + 100 : start + page] = os.urandom(page - 100)
    db.write_bytes(bytes(data))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(BadInputError, match=r"did not finish, and is damaged \(On tree page .*delete it") as error:
        SqliteStore(f"sqlite:///{db}", create=True)
    assert "\n" not in str(error.value)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_an_experiment_without_times_gets_now_as_mlflow_gives_it(tmp_path):
    import time

    from trackport.domain import Experiment

    db = tmp_path / "mlflow.db"
    sink = SqliteStore(f"sqlite:///{db}", create=True)
    before = int(time.time() * 1000)
    exp = sink.put_experiment(Experiment(experiment_id="5", name="no times")).target_experiment_id
    sink.close()
    with sqlite3.connect(db) as con:
        created, updated = con.execute(
            "SELECT creation_time, last_update_time FROM experiments WHERE experiment_id = ?", (int(exp),)).fetchone()
    assert before <= created <= int(time.time() * 1000) and updated == created


def test_a_store_left_with_a_hot_journal_is_recovered_before_writing(tmp_path):
    """A writer killed inside a transaction leaves a journal that only a read-write
    connection can roll back; read-only checks alone would call the store foreign."""
    from trackport.stores.mlflow_db.sqlite import SqliteSource, looks_like_mlflow_db

    db = tmp_path / "mlflow.db"
    SqliteStore(f"sqlite:///{db}", create=True).close()
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('PRAGMA cache_size = 2')\n"  # so the transaction spills into the file
        "con.execute('BEGIN IMMEDIATE')\n"
        "con.execute(\"UPDATE experiments SET name = 'half-written'\")\n"
        "con.executemany('INSERT INTO experiment_tags VALUES (?, ?, 0)',"
        " ((f'k{i}', 'v' * 1000) for i in range(5000)))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"), str(db)])
    assert killed.returncode == -9
    assert (tmp_path / "mlflow.db-journal").exists()
    assert not looks_like_mlflow_db(db)  # the read-only view, before recovery
    with pytest.raises(BadInputError, match=r"journal of a write that never finished.*then export again"):
        SqliteSource(f"sqlite:///{db}", db)
    sink = SqliteStore(f"sqlite:///{db}", create=True)
    sink.close()
    with sqlite3.connect(db) as con:
        assert [r[0] for r in con.execute("SELECT name FROM experiments")] == ["Default"]


@pytest.mark.parametrize("journal_mode, leftover", [("DELETE", "mlflow.db-journal"), ("WAL", "mlflow.db-wal")])
def test_a_journal_left_by_a_deleted_database_is_refused(tmp_path, journal_mode, leftover):
    """sqlite replays a journal or write-ahead log into a database of the same name, so a
    new store beside one left from a deleted database would start out damaged."""
    db = tmp_path / "mlflow.db"
    SqliteStore(f"sqlite:///{db}", create=True).close()
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        f"con.execute('PRAGMA journal_mode = {journal_mode}')\n"
        "con.execute('PRAGMA cache_size = 2')\n"
        "con.execute('BEGIN IMMEDIATE')\n"
        "con.executemany('INSERT INTO experiment_tags VALUES (?, ?, 0)',"
        " ((f'k{i}', 'v' * 1000) for i in range(5000)))\n"
        "if sys.argv[2] == 'WAL': con.execute('COMMIT')\n"  # committed into the log, not checkpointed
        "os.kill(os.getpid(), signal.SIGKILL)\n"), str(db), journal_mode])
    assert killed.returncode == -9
    assert (tmp_path / leftover).exists()
    db.unlink()
    shutil.rmtree(tmp_path / "mlflow.db.trackport")
    files_before = sorted(tmp_path.rglob("*"))
    with pytest.raises(BadInputError, match=rf"{leftover} is left from a deleted database.*remove it"):
        SqliteStore(f"sqlite:///{db}", create=True)
    assert sorted(tmp_path.rglob("*")) == files_before
