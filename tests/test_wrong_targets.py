"""Store kinds come from one registry: an unknown scheme is refused with the list of known
ones, a path is a path, a store is never its own target, and --experiment says whether it
means a name or an id. Each refusal is one line, exit 2 or 3, and writes nothing."""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess

import pytest
from test_cli import assert_one_line_error, trackport, tree


def _in(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["trackport", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize(
    "target, words",
    [
        ("foo://x", ("unknown kind of store 'foo'", "http(s)://", "s3://bucket/prefix")),
        ("gs://b/p", ("unknown kind of store 'gs'", "bundles on Google Cloud Storage are not supported yet")),
    ],
)
def test_an_unknown_scheme_is_refused_and_nothing_is_written(sample_sqlite, tmp_path, target, words):
    for command in (("export", sample_sqlite, target), ("copy", sample_sqlite, target)):
        assert_one_line_error(_in(tmp_path, *command), 3, *words)
    assert_one_line_error(_in(tmp_path, "import", target, f"sqlite:///{tmp_path / 'x.db'}"), 3, "unknown kind")
    assert list(tmp_path.iterdir()) == []  # no "gs:" folder, no database


def test_a_store_is_never_its_own_target(sample_bundle, sample_sqlite, tmp_path):
    db = tmp_path / "store.db"
    shutil.copy(sample_sqlite[len("sqlite:///"):], db)
    before = (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns, tree(tmp_path))
    for source, target in (
        (f"sqlite:///{db}", f"sqlite:///{db}"),
        (f"sqlite:///{db}", str(db)),  # another spelling of the same file
        (f"sqlite:///{db}?artifacts_destination={tmp_path}", f"sqlite:///{tmp_path}/./store.db"),
    ):
        assert_one_line_error(trackport("copy", source, target), 3, "is the source itself")
    assert (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns, tree(tmp_path)) == before
    bundle_before = tree(sample_bundle)
    assert_one_line_error(trackport("export", str(sample_bundle), str(sample_bundle)), 3, "is the source itself")
    assert tree(sample_bundle) == bundle_before


def test_one_server_under_two_names_is_refused(source_server):
    other_name = source_server.url.replace("127.0.0.1", "localhost")
    result = trackport("copy", source_server.url, other_name)
    assert_one_line_error(result, 3, "is the source itself")


def test_a_path_is_a_path(sample_sqlite, tmp_path):
    result = _in(tmp_path, "export", sample_sqlite, "databricks-backup")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "databricks-backup" / "manifest.jsonl").is_file()
    result = _in(tmp_path, "import", "databricks-backup", "t.db", "--json")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t.db").is_file()


def test_experiment_by_id_or_by_name(sample_sqlite, tmp_path):
    """An experiment named "2" beside the experiment with id 2: the bare ref is ambiguous;
    id:2 and name:2 say which."""
    db = tmp_path / "store.db"
    shutil.copy(sample_sqlite[len("sqlite:///"):], db)
    with sqlite3.connect(db) as con:
        names = dict(con.execute("SELECT experiment_id, name FROM experiments"))
        assert names[2] == "trackport sample b"
        con.execute("UPDATE experiments SET name = '2' WHERE experiment_id = 1")
    source = f"sqlite:///{db}"
    ambiguous = trackport("export", source, str(tmp_path / "b0"), "--experiment", "2")
    assert_one_line_error(ambiguous, 3, "ambiguous", "id:2", "name:2")
    assert not (tmp_path / "b0").exists()
    for ref, expected in (("id:2", "trackport sample b"), ("name:2", "2")):
        bundle = tmp_path / ref.replace(":", "-")
        result = trackport("export", source, str(bundle), "--experiment", ref, "--json")
        assert result.returncode == 0, result.stderr
        info = json.loads(trackport("bundle", "inspect", str(bundle), "--json").stdout)
        assert [e["name"] for e in info["experiments"]] == [expected]
    assert_one_line_error(trackport("export", source, str(tmp_path / "b9"), "--experiment", "id:9"), 3,
                          "no experiment with id '9'")
