"""Stores that share a folder, and writers that share a target.

Two sqlite stores side by side in one directory, or a server's database read as a source
while the target's artifacts would go where the server keeps its own: trackport keeps run
ids, so the target's folder for a run can be the other store's folder of the same run. No
copy, import, failed import or killed import into one may change a byte of the other's
files; and two transfers into one target never run at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from memory_source import memory_bundle
from test_cli import assert_one_line_error, trackport
from test_resume import _trackport_command, kill_and_rerun

from trackport.locking import TargetLock, is_locked
from trackport.samples.sample_store import SAMPLE_COUNTS
from trackport.opening import state_dir_for


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (links and directories by what they are)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def run_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {row[0] for row in con.execute("SELECT run_uuid FROM runs")}


def verify(source: str, target: str) -> None:
    result = trackport("verify", source, target, "--include-deleted", "--level", "full")
    assert result.returncode == 0 and "0 differences" in result.stdout, result.stdout + result.stderr


def run_folders(root: Path) -> set[str]:
    """Run ids that have a folder under an artifact root laid out <experiment>/<run>/."""
    return {p.name for p in root.glob("*/*") if p.is_dir()}


def test_two_sqlite_stores_in_one_folder(sample_bundle, bundle_copy, tmp_path):
    folder = tmp_path / "stores"
    shared = folder / "mlartifacts"  # the one artifact folder both stores used before each had its own
    a = f"sqlite:///{folder / 'a.db'}"
    first = trackport("import", str(sample_bundle), a, "--artifact-root", str(shared))
    assert first.returncode == 0, first.stderr
    a_files = hashes(shared)
    assert len([f for f in a_files.values() if f != "dir"]) == SAMPLE_COUNTS["artifact_files"]

    # By default each store gets a folder of its own: the copy is whole, a untouched.
    b = f"sqlite:///{folder / 'b.db'}"
    copied = trackport("copy", a, b, "--include-deleted")
    assert copied.returncode == 0, copied.stdout + copied.stderr
    verify(a, b)
    assert hashes(shared) == a_files
    assert len(run_folders(folder / "b-artifacts")) == 3  # the runs with artifacts

    # Told to share a's folder: every run whose folder a holds is refused, by name, and
    # nothing of a's changes; runs without artifacts (and not under a refused parent) arrive.
    c = f"sqlite:///{folder / 'c.db'}"
    shared_copy = trackport("copy", a, c, "--include-deleted", "--artifact-root", str(shared), "--json")
    assert shared_copy.returncode == 1, shared_copy.stdout + shared_copy.stderr
    report = json.loads(shared_copy.stdout)
    refused = {f["source_id"]: f["reason"] for f in report["failures"]}
    with_folders = run_folders(shared)
    assert set(refused) >= with_folders
    for run_id in with_folders:  # by its folder, or with its parent (refused by its folder)
        reason = refused[run_id]
        assert "exists and was not made by this transfer" in reason or (
            reason.startswith("its parent run ") and reason.split()[3] in refused
        ), reason
    assert sum("exists and was not made by this transfer" in r for r in refused.values()) >= 2
    assert hashes(shared) == a_files
    assert run_ids(folder / "c.db") == run_ids(folder / "a.db") - set(refused)

    # A failed import into a store sharing the folder (a damaged artifact) leaves a as it was.
    victim = next(bundle_copy.rglob("artifacts/gone.txt"))
    victim.write_bytes(b"damaged")
    d = f"sqlite:///{folder / 'd.db'}"
    damaged = trackport("import", str(bundle_copy), d, "--artifact-root", str(shared))
    assert damaged.returncode == 1
    assert hashes(shared) == a_files


def test_a_killed_import_beside_another_store(sample_bundle, tmp_path):
    """A transfer killed while writing into a folder another store uses, then resumed:
    its leftovers are cleared (they are recorded as its own), the other store's files are
    not touched, and the resumed import is whole."""
    folder = tmp_path / "stores"
    shared = folder / "mlartifacts"
    a = f"sqlite:///{folder / 'a.db'}"
    assert trackport("import", str(sample_bundle), a, "--artifact-root", str(shared)).returncode == 0
    a_files = hashes(shared)
    # Runs of other ids in the same experiment folders (1/, 2/) as a's runs.
    big = memory_bundle(tmp_path / "big", runs=40, artifact_bytes=200_000, points=2_000)
    db = folder / "e.db"
    command = _trackport_command() + ["import", str(big), f"sqlite:///{db}", "--artifact-root", str(shared),
                                      "--workers", "2"]
    ledger = Path(str(db) + ".trackport") / "ledger.jsonl"
    outcomes = kill_and_rerun(
        command, random.Random(3), kills=2, window=(0.05, 0.6), log=tmp_path / "log",
        started=lambda: ledger.exists() and ledger.stat().st_size > 0,
    )
    assert "killed" in outcomes, outcomes
    assert {k: v for k, v in hashes(shared).items() if k in a_files} == a_files
    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    verify(str(big), f"sqlite:///{db}")
    assert {k: v for k, v in hashes(shared).items() if k in a_files} == a_files
    # Nothing is left of the killed attempts: every run folder under the shared root is a
    # run of one of the two stores, and no claim is left open.
    assert run_folders(shared) <= run_ids(folder / "a.db") | run_ids(db)
    assert not list(Path(str(db) + ".trackport", "claims").iterdir())
    assert not [p for p in shared.rglob("*") if ".tmp-" in p.name]


def test_a_server_database_read_beside_its_artifacts(source_server, tmp_path):
    """The server's own database as the source, the copy made next to it with the server's
    artifact folder as its root: the server's files are never touched."""
    srv = tmp_path / "srv"
    srv.mkdir()
    with sqlite3.connect(source_server.workdir / "mlflow.db") as live, sqlite3.connect(srv / "mlflow.db") as copy:
        live.backup(copy)  # a consistent copy of a live server's database
    shutil.copytree(source_server.workdir / "mlartifacts", srv / "mlartifacts")
    server_files = hashes(srv / "mlartifacts")
    source = f"sqlite:///{srv / 'mlflow.db'}?artifacts_destination={srv / 'mlartifacts'}"
    shared = trackport("copy", source, f"sqlite:///{srv / 'copy.db'}", "--include-deleted",
                       "--artifact-root", str(srv / "mlartifacts"), "--json")
    assert shared.returncode in (0, 1), shared.stderr
    assert hashes(srv / "mlartifacts") == server_files
    own = trackport("copy", source, f"sqlite:///{srv / 'own.db'}", "--include-deleted")
    assert own.returncode == 0, own.stdout + own.stderr
    verify(source, f"sqlite:///{srv / 'own.db'}")
    assert hashes(srv / "mlartifacts") == server_files


def test_a_second_writer_is_refused_and_names_the_first(sample_bundle, target_server, tmp_path):
    db = tmp_path / "t" / "mlflow.db"
    target = f"sqlite:///{db}"
    for where in (target, target_server.url, str(tmp_path / "bundle")):
        holder = TargetLock(state_dir_for(where), where)
        try:
            assert is_locked(state_dir_for(where)) and str(os.getpid()) in is_locked(state_dir_for(where))
            command = ("export", str(sample_bundle), where) if where.endswith("bundle") else (
                "import", str(sample_bundle), where)
            result = trackport(*command)
            assert_one_line_error(result, 7, "being written by another trackport", f"pid {os.getpid()}")
        finally:
            holder.release()
    assert not db.exists()  # refused before the database was made
    assert not (tmp_path / "bundle" / "trackport-bundle.json").exists()


def test_two_imports_into_one_sqlite_target_at_once(tmp_path):
    big = memory_bundle(tmp_path / "big", runs=60, artifact_bytes=50_000, points=5_000)
    db = tmp_path / "t" / "mlflow.db"
    command = _trackport_command() + ["import", str(big), f"sqlite:///{db}", "--workers", "2"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not is_locked(Path(str(db) + ".trackport")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=300)
    codes = sorted((first.returncode, second.returncode))
    assert codes in ([0, 0], [0, 7]), (codes, err, second.stderr)
    if second.returncode == 7:  # it came while the first was writing: refused, naming it
        assert f"pid {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    verify(str(big), f"sqlite:///{db}")
