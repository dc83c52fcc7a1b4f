"""Resume after SIGKILL: a transfer killed at random moments and re-run with the same
command converges to the complete result: everything equal to the source, exactly one
complete copy of each run, no half-written run left visible as an ordinary run.

A bundle larger than the sample (written once, cheaply, from an in-memory store) makes
the kills land mid-transfer. Kill moments are seeded; whether a kill landed mid-transfer is
checked (the process was still running), not timed.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from faultproxy import check_server_copies
from memory_source import MemorySource

from trackport.bundle.layout import MANIFEST_FILE
from trackport.domain import (
    ACTIVE,
    DELETED,
    METRIC_SCHEMA,
    Experiment,
    Run,
)
from trackport.opening import open_bundle_sink, open_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer import transfer
from trackport.transfer.compare import compare_stores
from trackport.transfer.idmap import IdMap

EVERYTHING = Selection(include_deleted=True)
SEED = 20250611

BIG_EXPERIMENTS = ("resume-a", "resume b")
BIG_RUNS_PER_EXPERIMENT = 8
BIG_POINTS = 1_500  # per run, over three keys: two log-batch calls into a server
BIG_ARTIFACTS = 2


def _trackport_command() -> list[str]:
    """The installed console script, as users run it."""
    from shutil import which

    script = which("trackport")
    assert script, "the trackport console script is not installed (pip install -e .)"
    return [script]


def _synthetic_source() -> MemorySource:
    """A source larger than the sample: 16 runs (parents and children, one deleted), 1,500
    metric points (NaN included) and 2 artifacts each. Cheap to make; the bundle written
    from it is the source of truth the targets are compared with."""
    rng = random.Random(SEED)
    base = 1_700_000_000_000
    experiments = [
        Experiment(str(e + 1), name, creation_time=base, last_update_time=base, tags={"team": f"team-{e}"})
        for e, name in enumerate(BIG_EXPERIMENTS)
    ]
    runs: list[Run] = []
    metrics: dict[str, pa.RecordBatch] = {}
    artifacts: dict[str, dict[str, bytes]] = {}
    for e, experiment in enumerate(experiments):
        parent = None
        for i in range(BIG_RUNS_PER_EXPERIMENT):
            run_id = f"{rng.getrandbits(128):032x}"
            tags = {"mlflow.user": "resumer", "mlflow.runName": f"run {e}-{i}", "note": f"run {i}"}
            if parent is not None and i % 3:
                tags["mlflow.parentRunId"] = parent
            if i % 3 == 0:
                parent = run_id
            deleted = e == 1 and i == BIG_RUNS_PER_EXPERIMENT - 1
            runs.append(Run(
                run_id=run_id, experiment_id=experiment.experiment_id, run_name=f"run {e}-{i}",
                user_id="resumer", status="FINISHED" if i % 5 else "FAILED",
                start_time=base + e * 10_000 + i, end_time=base + 99_000 + i,
                lifecycle_stage=DELETED if deleted else ACTIVE, deleted_time=base + 100_000 if deleted else None,
                params={f"p{k}": str(rng.random()) for k in range(20)}, tags=tags,
            ))
            per_key = BIG_POINTS // 3
            keys = sorted(("loss", "acc", "lr"))
            metrics[run_id] = pa.RecordBatch.from_arrays([
                pa.array([k for k in keys for _ in range(per_key)], pa.string()),
                pa.array([j for _ in keys for j in range(per_key)], pa.int64()),
                pa.array([base + j for _ in keys for j in range(per_key)], pa.int64()),
                pa.array([rng.random() if j % 97 else math.nan for _ in keys for j in range(per_key)], pa.float64()),
            ], schema=METRIC_SCHEMA)
            artifacts[run_id] = {f"dir/file-{k}.bin": rng.randbytes(2_000 * (k + 1)) for k in range(BIG_ARTIFACTS)}
    return MemorySource(experiments, runs, metrics, artifacts, uri="synthetic:resume")


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big-bundle") / "bundle"
    summary = transfer(_synthetic_source(), open_bundle_sink(str(path)), EVERYTHING)
    assert summary.failed == 0, summary.failures
    return path


def _big_run_count() -> int:
    return len(BIG_EXPERIMENTS) * BIG_RUNS_PER_EXPERIMENT


# -- killing and re-running ---------------------------------------------------------------


def kill_and_rerun(
    command: list[str],
    rng: random.Random,
    *,
    kills: int,
    window: tuple[float, float],
    log: Path,
    started: Callable[[], bool] = lambda: True,
    done: Callable[[], bool] = lambda: False,
) -> list[str]:
    """Start the command, SIGKILL it `window` seconds (seeded) after `started()` holds,
    `kills` times; stop early once `done()`. Returns what happened to each attempt:
    "killed" (it was still running) or "exit N" (it ended before the kill)."""
    outcomes = []
    for attempt in range(kills):
        if done():
            break
        with open(log, "ab") as err:
            err.write(f"--- attempt {attempt}\n".encode())
            err.flush()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not started() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            try:
                code = process.wait(timeout=rng.uniform(*window))
                outcomes.append(f"exit {code}")
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                outcomes.append("killed")
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
    return outcomes


def final_run(command: list[str], log: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=300)
    with open(log, "a") as f:
        f.write(f"--- final: exit {result.returncode}\n{result.stderr}\n")
    return result


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


# -- the tests ------------------------------------------------------------------------------


def test_import_into_a_server_killed_at_random_moments_converges(big_bundle, fresh_server, tmp_path):
    began = time.monotonic()
    command = _trackport_command() + ["import", str(big_bundle), fresh_server.url, "--include-deleted"]
    log = tmp_path / "attempts.log"
    outcomes = kill_and_rerun(command, random.Random(SEED), kills=4, window=(0.8, 3.0), log=log)
    assert outcomes.count("killed") >= 3, (outcomes, log.read_text())

    result = final_run(command, log)
    assert result.returncode == 0, log.read_text()
    summary = json.loads(result.stdout)
    assert summary["counts"]["runs"]["failed"] == 0

    ids, replaced = check_server_copies(fresh_server.url, _bundle_run_ids(big_bundle))
    differences = list(compare_stores(open_source(str(big_bundle)), open_source(fresh_server.url), EVERYTHING,
                                      run_id_map=ids.get, clamps_infinity=True))
    assert differences == [], differences[:10]
    # The id map written along the way agrees with what the target says.
    sink = open_sink(fresh_server.url)
    try:
        idmap = IdMap(sink.state_dir())
        assert {source: idmap.get("run", source) for source in ids} == ids
    finally:
        sink.close()
    print(f"\nimport into a server: attempts {outcomes}, partial copies replaced: {replaced}, "
          f"{time.monotonic() - began:.1f}s")
    began = time.monotonic()

    # Export back out of that server, killed the same way: the bundle verifies full and
    # holds what the server holds.
    bundle = tmp_path / "exported"
    command = _trackport_command() + ["export", fresh_server.url, str(bundle), "--include-deleted"]
    runs_root = bundle / "experiments"
    outcomes = kill_and_rerun(
        command, random.Random(SEED + 1), kills=3, window=(0.2, 2.0), log=log,
        done=lambda: (bundle / MANIFEST_FILE).exists(),
    )
    assert outcomes.count("killed") >= 2, (outcomes, log.read_text())
    if not (bundle / MANIFEST_FILE).exists():
        result = final_run(command, log)
        assert result.returncode == 0, log.read_text()
    _assert_bundle_verifies(bundle)
    # What the server holds is what the big bundle holds (checked above, through the id
    # map); the export must hold the same, under the server's run ids.
    differences = list(compare_stores(open_source(str(big_bundle)), open_source(str(bundle)), EVERYTHING,
                                      run_id_map=ids.get, clamps_infinity=True))
    assert differences == [], differences[:10]
    leftovers = [p for p in runs_root.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    print(f"export from a server: attempts {outcomes}, {time.monotonic() - began:.1f}s")


def test_import_into_sqlite_killed_at_random_moments_converges(big_bundle, tmp_path):
    began = time.monotonic()
    db = tmp_path / "target" / "mlflow.db"
    uri = f"sqlite:///{db}"
    state = Path(str(db) + ".trackport")
    command = _trackport_command() + ["import", str(big_bundle), uri, "--include-deleted"]
    log = tmp_path / "attempts.log"
    rng = random.Random(SEED + 2)
    # The first kill lands while the new database is being created; the others once the
    # transfer writes runs.
    outcomes = kill_and_rerun(command, rng, kills=1, window=(0.0, 0.6), log=log, started=db.exists)
    outcomes += kill_and_rerun(
        command, rng, kills=2, window=(0.1, 1.5), log=log,
        started=lambda: _lines(state / "ledger.jsonl") > 0,
    )
    assert outcomes.count("killed") >= 2, (outcomes, log.read_text())

    result = final_run(command, log)
    assert result.returncode == 0, log.read_text()
    # Runs killed while filling the database they made left its marker (so each next run
    # checked the database first); the clean end fsynced and removed it.
    assert not (state / "filling").exists()
    assert json.loads(result.stdout)["counts"]["runs"]["failed"] == 0
    differences = list(compare_stores(open_source(str(big_bundle)), open_source(uri), EVERYTHING))
    assert differences == [], differences[:10]
    # Run ids are kept: the target holds exactly the bundle's runs, each once.
    import sqlite3

    with sqlite3.connect(db) as con:
        rows = [r[0] for r in con.execute("select run_uuid from runs")]
    assert sorted(rows) == sorted(_bundle_run_ids(big_bundle))
    print(f"\nimport into sqlite: attempts {outcomes}, {time.monotonic() - began:.1f}s")


def _bundle_run_ids(bundle: Path) -> set[str]:
    source = open_source(str(bundle))
    ids = set()
    for experiment in source.list_experiments(EVERYTHING):
        ids.update(run.run_id for run in source.iter_runs(experiment, EVERYTHING))
    assert len(ids) == _big_run_count()
    return ids


def _assert_bundle_verifies(bundle: Path) -> None:
    verified = subprocess.run(
        _trackport_command() + ["bundle", "verify", str(bundle), "--level", "full"],
        capture_output=True, text=True, timeout=300,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
