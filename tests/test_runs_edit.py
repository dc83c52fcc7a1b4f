"""`trackport runs tag | rename | delete | restore` on a real tracking server and real
sqlite stores: bulk delete with --max-runs and children, then restore, gives the store back
as it was (trackport's own compare); a dry run changes nothing; a server's restore goes by
trackport's deletion record and names the runs deleted otherwise; tags and names read back
with MLflow's client; the refusals."""
from __future__ import annotations

import json
import os
import pty
import shutil
import sqlite3
import subprocess
import time
import uuid
from contextlib import closing, contextmanager
from typing import Iterator

import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.editing import RECORD_FILE, DeletionRecord
from trackport.locking import TargetLock
from trackport.opening import open_sink, open_source, state_dir_for
from trackport.samples.sample_store import BASE_TIME, EXPERIMENT_A, EXPERIMENT_B
from trackport.stores.base import Selection
from trackport.transfer import transfer
from trackport.transfer.compare import compare_stores

EVERYTHING = Selection(include_deleted=True)
FAMILY = ("parent run", "child", "grandchild")  # created at BASE_TIME, +1 s, +2 s: children after the time


def runs(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, ["runs", *args])
    if ok:
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result


def as_json(*args: str) -> dict:
    return json.loads(runs(*args, "--json").stdout)


def names(result: dict, outcome: str) -> list[str]:
    return [r["run_name"] for r in result["runs"] if r["outcome"] == outcome]


def one_line_error(result, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def differences(expected: str, actual: str, selection: Selection = EVERYTHING) -> list[str]:
    with open_source(expected) as a, open_source(actual) as b:
        return [str(d) for d in compare_stores(a, b, selection)]


def stages(uri: str, experiment: str) -> dict[str, tuple[str, int | None]]:
    """Run name -> (lifecycle stage, deletion time) as the store says."""
    with open_source(uri) as store:
        found = list(store.list_experiments(Selection(experiments=(experiment,), include_deleted=True)))
        return {r.run_name: (r.lifecycle_stage, r.deleted_time) for r in store.iter_runs(found[0], EVERYTHING)}


def run_id(uri: str, experiment: str, name: str) -> str:
    with open_source(uri) as store:
        found = list(store.list_experiments(Selection(experiments=(experiment,), include_deleted=True)))
        return next(r.run_id for r in store.iter_runs(found[0], EVERYTHING) if r.run_name == name)


@pytest.fixture
def sqlite_copy(sample_sqlite, tmp_path) -> str:
    """A copy of the sample store (its artifact locations still name the sample's folder,
    which nothing here writes)."""
    shutil.copy(sample_sqlite.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def on_server(sample_sqlite, target_server, tmp_path_factory):
    """The sample's two experiments under names of this module's own on the shared server;
    the renamed local copy they came from is the untouched original."""
    original = tmp_path_factory.mktemp("runs-edit") / "original.db"
    shutil.copy(sample_sqlite.removeprefix("sqlite:///"), original)
    tag = uuid.uuid4().hex[:8]
    renamed = {EXPERIMENT_A: f"runs-edit-a-{tag}", EXPERIMENT_B: f"runs-edit-b-{tag}"}
    with closing(sqlite3.connect(original)) as con, con:
        for old, new in renamed.items():
            con.execute("UPDATE experiments SET name = ? WHERE name = ?", (new, old))
    uri = f"sqlite:///{original}"
    with open_source(uri) as source, open_sink(target_server.url) as sink:
        summary = transfer(source, sink, Selection(experiments=tuple(renamed.values()), include_deleted=True))
    assert summary.failed == 0, summary.failures
    return uri, target_server.url, renamed[EXPERIMENT_A], renamed[EXPERIMENT_B]


def test_bulk_delete_and_restore_give_a_sqlite_store_back(sample_sqlite, sqlite_copy):
    delete = ("delete", sqlite_copy, "--experiment", EXPERIMENT_A, "--created-before", str(BASE_TIME))
    before = stages(sqlite_copy, EXPERIMENT_A)
    started = int(time.time() * 1000)

    planned = as_json(*delete, "--dry-run")
    assert names(planned, "planned") == list(FAMILY) and planned["dry_run"]
    assert differences(sample_sqlite, sqlite_copy) == []  # the dry run changed nothing

    capped = as_json(*delete, "--max-runs", "2", "--yes")  # oldest first, the cap counts descendants
    assert names(capped, "done") == ["parent run", "child"] and names(capped, "skipped") == ["grandchild"]
    assert [r["reason"] for r in capped["runs"] if r["outcome"] == "skipped"] == [
        "over --max-runs 2: run the same command again to delete it"
    ]
    rest = as_json(*delete, "--yes")  # the grandchild of a deleted parent, created after the time
    assert names(rest, "done") == ["grandchild"]
    after = stages(sqlite_copy, EXPERIMENT_A)
    assert all(after[name][0] == "deleted" and after[name][1] >= started for name in FAMILY)
    assert len(differences(sample_sqlite, sqlite_copy)) == 3  # the compare sees the deletion

    restored = as_json("restore", sqlite_copy, "--experiment", EXPERIMENT_A, "--deleted-after", str(started), "--yes")
    assert sorted(names(restored, "done")) == sorted(FAMILY)  # not the run deleted before
    assert differences(sample_sqlite, sqlite_copy) == []
    assert stages(sqlite_copy, EXPERIMENT_A) == before  # deleted_time too: none again, the old one kept


def test_children_stay_with_no_children(sqlite_copy):
    result = as_json("delete", sqlite_copy, "--experiment", EXPERIMENT_A, "--created-before", str(BASE_TIME),
                     "--no-children", "--yes")
    assert names(result, "done") == ["parent run"]
    after = stages(sqlite_copy, EXPERIMENT_A)
    assert [after[name][0] for name in FAMILY] == ["deleted", "active", "active"]


def test_bulk_delete_and_restore_give_a_server_back(on_server):
    original, server, experiment, _ = on_server
    selection = Selection(experiments=(experiment,), include_deleted=True)
    delete = ("delete", server, "--experiment", experiment, "--created-before", str(BASE_TIME))
    restore = ("restore", server, "--experiment", experiment, "--deleted-after")
    assert differences(original, server, selection) == []
    started = int(time.time() * 1000)

    assert names(as_json(*delete, "--dry-run"), "planned") == list(FAMILY)
    assert differences(original, server, selection) == []
    capped = as_json(*delete, "--max-runs", "2", "--yes")
    assert names(capped, "done") == ["parent run", "child"] and not capped["bulk_endpoint"]  # no Databricks here
    assert names(as_json(*delete, "--yes"), "done") == ["grandchild"]
    assert len(differences(original, server, selection)) == 3

    record = [json.loads(line) for line in (state_dir_for(server) / RECORD_FILE).read_text().splitlines()]
    deleted_ids = {run_id(server, experiment, name) for name in FAMILY}
    assert {e["run_id"] for e in record if e["state"] == "deleted"} >= deleted_ids
    assert all(e["at"] >= started for e in record if e["run_id"] in deleted_ids)

    # The sample's deleted run was deleted by the copy, not by `runs delete`: its time is unknown.
    planned = as_json(*restore, str(started), "--dry-run")
    assert names(planned, "planned") == list(FAMILY)
    unknown = [r for r in planned["runs"] if r["outcome"] == "skipped"]
    assert [(r["run_name"], r["reason"]) for r in unknown] == [
        ("deleted run", "deletion time unknown (deleted outside trackport); --include-unknown restores it too")
    ]
    text = runs(*restore, str(started), "--yes").stdout
    assert "restored 3 runs" in text and "skipped 1 run: deletion time unknown (deleted outside trackport)" in text
    assert stages(server, experiment)["deleted run"][0] == "deleted"
    assert differences(original, server, selection) == []


def test_a_restored_run_deleted_again_outside_trackport_is_unknown(on_server):
    _, server, _, experiment = on_server
    killed = run_id(server, experiment, "killed run")
    started = int(time.time() * 1000)
    runs("delete", server, "--experiment", experiment, "--created-before", str(BASE_TIME + 10_000), "--yes")
    runs("restore", server, "--experiment", experiment, "--deleted-after", str(started), "--yes")
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=server).delete_run(killed)  # after trackport's own restore
    planned = as_json("restore", server, "--experiment", experiment, "--deleted-after", str(started), "--dry-run")
    assert names(planned, "planned") == [] and names(planned, "skipped") == ["killed run"]
    assert names(as_json("restore", server, "--experiment", experiment, "--deleted-after", str(started),
                         "--include-unknown", "--yes"), "done") == ["killed run"]


@pytest.mark.parametrize("kind", ["sqlite", "server"])
def test_tag_and_rename_read_back_with_mlflow(kind, request):
    from mlflow.tracking import MlflowClient

    if kind == "sqlite":
        uri, experiment = request.getfixturevalue("sqlite_copy"), EXPERIMENT_B
    else:
        _, uri, _, experiment = request.getfixturevalue("on_server")
    run = run_id(uri, experiment, "still running")
    runs("tag", uri, run, "team=vision", "note=a=b c", "mlflow.source.type=JOB")
    runs("tag", uri, run, "stage=prod", "--delete", "note")
    runs("tag", uri, run, "mlflow.runName=named by its tag")  # as MLflow's set_tag: the name follows
    assert MlflowClient(tracking_uri=uri).get_run(run).info.run_name == "named by its tag"
    runs("rename", uri, run, "renamed run")
    read = MlflowClient(tracking_uri=uri).get_run(run)
    tags = {k: v for k, v in read.data.tags.items() if not k.startswith("trackport.")}
    assert tags == {"team": "vision", "stage": "prod", "mlflow.source.type": "JOB", "mlflow.user": "carol",
                    "mlflow.runName": "renamed run"}
    assert read.info.run_name == "renamed run"

    one_line_error(runs("tag", uri, run, "x=1", "--delete", "no such tag", ok=False), 3, "no such tag")
    assert "x" not in MlflowClient(tracking_uri=uri).get_run(run).data.tags  # refused whole
    one_line_error(runs("tag", uri, run, "../up=1", ok=False), 2, "../up")
    one_line_error(runs("rename", uri, "0" * 32, "x", ok=False), 3, "0" * 32)


def test_refusals(sqlite_copy, sample_bundle):
    delete = ["delete", sqlite_copy, "--experiment", EXPERIMENT_A, "--created-before", str(BASE_TIME)]
    one_line_error(runs("delete", str(sample_bundle), "--experiment", EXPERIMENT_A, "--created-before", "1", "--yes",
                        ok=False), 3, "cannot edit runs here", "sqlite:///")
    one_line_error(runs("tag", str(sample_bundle), "0" * 32, "a=b", ok=False), 3, "cannot edit runs here")
    one_line_error(runs(*delete, ok=False), 2, "--yes")  # CliRunner's stdin is no terminal
    for cap in ("0", "10001"):
        one_line_error(runs(*delete, "--max-runs", cap, "--yes", ok=False), 2, "--max-runs")
    one_line_error(runs(*delete, "--yes", "--created-befor", "2", ok=False), 2, "--created-befor")
    with held_lock(sqlite_copy):
        one_line_error(runs(*delete, "--yes", ok=False), 7, "another trackport")
    one_line_error(runs("restore", sqlite_copy, "--experiment", "nope", "--deleted-after", "1", "--yes", ok=False), 3, "nope")
    assert stages(sqlite_copy, EXPERIMENT_A)["parent run"][0] == "active"  # nothing above changed anything


def test_deletion_record_survives_a_torn_line(tmp_path):
    """The latest line of a run decides; a line torn by a kill is dropped, not glued to the next."""
    record = DeletionRecord(tmp_path / RECORD_FILE)
    record.write("1", ["a", "b"], "deleted", 100)
    record.write("1", ["b"], "active", 200)
    with open(record.path, "ab") as torn:
        torn.write(b'{"run_id": "c", "experi')
    assert record.deletion_times("1") == {"a": 100}
    record.write("1", ["c"], "deleted", 300)
    record.write("2", ["d"], "deleted", 400)
    assert record.deletion_times("1") == {"a": 100, "c": 300}
    assert all(json.loads(line) for line in record.path.read_text().splitlines())


@contextmanager
def held_lock(uri: str) -> Iterator[None]:
    """The store's lock, held as a running transfer holds it."""
    lock = TargetLock(state_dir_for(uri), uri)
    try:
        yield
    finally:
        lock.release()


def test_a_terminal_is_asked_first(sqlite_copy):
    """On a terminal the command asks; anything but yes changes nothing."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        ["trackport", "runs", "delete", sqlite_copy, "--experiment", EXPERIMENT_A, "--created-before", str(BASE_TIME)],
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ,
    )
    os.close(terminal)
    os.write(controller, b"n\n")
    out, err = process.communicate(timeout=120)
    os.close(controller)
    assert process.returncode == 1, (out, err)
    assert b"delete 3 runs of experiment" in err and b"cancelled; nothing was changed" in err
    assert stages(sqlite_copy, EXPERIMENT_A)["parent run"][0] == "active"
