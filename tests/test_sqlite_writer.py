"""The sqlite sink's write path: group commit and bulk metric inserts."""
from __future__ import annotations

import math
import sqlite3
import threading

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from trackport.config import TransferConfig  # noqa: E402
from trackport.domain import METRIC_SCHEMA, Experiment, Run  # noqa: E402
from trackport.stores.sqlite import metrics as sqlite_metrics  # noqa: E402
from trackport.stores.sqlite.group_commit import CommitError, GroupCommitWriter  # noqa: E402
from trackport.stores.sqlite.store import SqliteStore  # noqa: E402


def _table(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (unit INTEGER PRIMARY KEY, thread TEXT)")
    con.commit()
    con.close()


def _rows(path) -> set[int]:
    with sqlite3.connect(path) as con:
        return {row[0] for row in con.execute("SELECT unit FROM t")}


def test_group_commit_units_are_committed_when_write_returns(tmp_path):
    path = tmp_path / "g.db"
    _table(path)
    writer = GroupCommitWriter(path, max_units=5)
    seen_on_return: list[bool] = []
    failures: list[Exception] = []

    def worker(first: int) -> None:
        for unit in range(first, first + 40):
            def rows(cursor, unit=unit):
                cursor.execute("INSERT INTO t VALUES (?, ?)", (unit, threading.current_thread().name))
                if unit % 17 == 0:
                    raise ValueError(f"unit {unit} refused")
                return 1
            try:
                writer.write(rows)
            except ValueError as exc:
                failures.append(exc)
                continue
            # Another connection sees the unit as soon as write() has returned.
            seen_on_return.append(unit in _rows(path))

    threads = [threading.Thread(target=worker, args=(n * 1000,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    refused = {u for n in range(6) for u in range(n * 1000, n * 1000 + 40) if u % 17 == 0}
    expected = {u for n in range(6) for u in range(n * 1000, n * 1000 + 40)} - refused
    assert _rows(path) == expected  # a failed unit took nothing else with it
    assert len(failures) == len(refused)
    assert len(seen_on_return) == len(expected) and all(seen_on_return)


def test_group_commit_groups_units_under_contention(tmp_path):
    path = tmp_path / "g.db"
    _table(path)
    writer = GroupCommitWriter(path, max_units=1000)
    commits = 0
    original = writer._commit

    def counting_commit():
        nonlocal commits
        commits += 1
        original()

    writer._commit = counting_commit
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        for unit in range(n * 100, n * 100 + 50):
            writer.write(lambda cursor, unit=unit: cursor.execute("INSERT INTO t VALUES (?, 'x')", (unit,)).rowcount)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert len(_rows(path)) == 400
    assert commits < 400  # grouped: fewer commits than units


def test_failed_commit_fails_every_unit_it_held(tmp_path):
    path = tmp_path / "g.db"
    _table(path)
    writer = GroupCommitWriter(path, busy_timeout_s=0.2)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM t").fetchall()  # a shared lock: COMMIT cannot get its exclusive one
    with pytest.raises(CommitError, match="committing to the database failed"):
        writer.write(lambda cursor: cursor.execute("INSERT INTO t VALUES (1, 'x')").rowcount)
    reader.execute("COMMIT")
    assert _rows(path) == set()
    assert writer.write(lambda cursor: cursor.execute("INSERT INTO t VALUES (2, 'x')").rowcount) == 1
    writer.close()
    assert _rows(path) == {2}


class _Content:
    def __init__(self, batches):
        self._batches = batches

    def metric_batches(self):
        return iter(self._batches)

    def artifact_files(self):
        return iter(())

    def open_artifact(self, path):
        raise AssertionError("no artifacts")


def _history(points: int, seed: int) -> list[pa.RecordBatch]:
    """Several keys per batch (chunks that mix keys), NaN and ±inf here and there, repeated
    steps, batch boundaries that do not fall on key boundaries."""
    rng = np.random.default_rng(seed)
    keys = rng.choice(["loss", "acc", "a key with spaces", "ключ"], points)
    values = rng.normal(size=points)
    values[rng.random(points) < 0.01] = np.nan
    values[rng.random(points) < 0.005] = np.inf
    values[rng.random(points) < 0.005] = -np.inf
    steps = rng.integers(0, points // 3 + 1, points)
    stamps = 1_700_000_000_000 + rng.integers(0, 10**6, points)
    table = pa.table([pa.array(keys), pa.array(steps), pa.array(stamps), pa.array(values)], schema=METRIC_SCHEMA)
    return table.to_batches(max_chunksize=1777)


def _expected_latest(batches) -> dict[str, tuple]:
    latest: dict[str, tuple] = {}
    for row in pa.Table.from_batches(batches).to_pylist():
        nan = math.isnan(row["value"])
        point = (row["step"], row["timestamp"], 0.0 if nan else row["value"], int(nan))
        latest[row["key"]] = max(latest.get(row["key"], point), point)
    return latest


@pytest.mark.parametrize("in_memory_points", [10**9, 1000], ids=["in-memory", "spooled"])
def test_metric_points_arrive_exactly(tmp_path, in_memory_points):
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    sink = SqliteStore(uri, create=True, config=TransferConfig(sqlite_in_memory_points=in_memory_points))
    exp = sink.put_experiment(Experiment(experiment_id="1", name="e")).target_experiment_id
    batches = _history(12_000, seed=in_memory_points % 97)
    run = Run(run_id="b" * 32, experiment_id="1", run_name="r", user_id="u", status="FINISHED",
              start_time=1, end_time=2)
    result = sink.put_run(run, exp, _Content(batches))
    sink.close()
    assert not list((tmp_path / "db" / "mlflow.db.trackport").glob("spool-*"))  # spool removed

    sent = pa.Table.from_batches(batches).to_pylist()
    distinct = {(r["key"], r["step"], r["timestamp"], "nan" if math.isnan(r["value"]) else r["value"]) for r in sent}
    assert result.metric_points == len(distinct)
    assert bool(result.losses) == (len(distinct) < len(sent))
    client = MlflowClient(tracking_uri=uri)
    stored = set()
    for key in {r["key"] for r in sent}:
        for m in client.get_metric_history(run.run_id, key):
            stored.add((key, m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value))
    assert stored == distinct
    with sqlite3.connect(tmp_path / "db" / "mlflow.db") as con:
        latest = {k: (step, ts, v, nan) for k, v, ts, step, nan in con.execute(
            "SELECT key, value, timestamp, step, is_nan FROM latest_metrics WHERE run_uuid = ?", (run.run_id,))}
        assert con.execute("PRAGMA page_size").fetchone()[0] == 16384
    assert latest == _expected_latest(batches)


def test_metric_insert_sql_numbers_parameters():
    assert sqlite_metrics.metric_insert_sql(2, True, False).endswith("VALUES (?2,?3,?4,?1,?5,0),(?2,?6,?7,?1,?8,0)")
    assert sqlite_metrics.metric_insert_sql(1, False, True).endswith("VALUES (?2,?3,?4,?1,?5,?6)")


def test_spools_of_killed_transfers_are_removed_on_open(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "db" / "mlflow.db"
    SqliteStore(f"sqlite:///{db}", create=True).close()
    state = db.parent / "mlflow.db.trackport"
    state.mkdir(exist_ok=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = state / f"spool-{gone.stdout.strip()}-abc.arrow"
    alive = state / f"spool-{__import__('os').getpid()}-def.arrow"
    old_style = state / "spool-k2j3h4l1"
    for path in (dead, alive):
        path.write_bytes(b"x")
    old_style.mkdir()
    (old_style / "metrics.arrow").write_bytes(b"x")
    SqliteStore(f"sqlite:///{db}", create=True).close()
    assert not dead.exists() and not old_style.exists()
    assert alive.exists()  # a transfer still running keeps its spool
