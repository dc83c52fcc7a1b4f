"""The raw limit of writing a bundle into a new MLflow sqlite database from Python.

    python benchmarks/raw_sqlite_baseline.py BUNDLE TEMPLATE_DB TARGET_DIR

Copies an empty MLflow database (TEMPLATE_DB: trackport's schema template, which MLflow
built) to TARGET_DIR/mlflow.db, then does only what an import must: for each run of the
bundle, its row, params, tags, metric points (1,000-row multi-value INSERTs, every value
bound, as fast as the sqlite3 module goes) and latest metrics, one transaction per run with
synchronous=OFF, and its artifact files copied. One thread, no checks, no hashes, no
ledger, no resume, no NaN handling (the workload has none). It prints its metric points
and the seconds spent after start-up.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

ROWS = 1000


def main(bundle: Path, template: Path, target: Path) -> None:
    began = time.perf_counter()
    target.mkdir(parents=True)
    db = target / "mlflow.db"
    shutil.copyfile(template, db)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA synchronous = OFF")
    experiment_ids = {}
    points = 0
    for run_dir in sorted(bundle.glob("experiments/*/runs/*")):
        exp_dir = run_dir.parent.parent
        if exp_dir not in experiment_ids:
            doc = json.loads((exp_dir / "experiment.json").read_text())
            con.execute("INSERT OR IGNORE INTO experiments (experiment_id, name, artifact_location, lifecycle_stage,"
                        " creation_time, last_update_time) VALUES (?, ?, ?, ?, ?, ?)",
                        (int(doc["experiment_id"]), doc["name"], str(target / "mlartifacts" / doc["experiment_id"]),
                         doc["lifecycle_stage"], doc["creation_time"], doc["last_update_time"]))
            experiment_ids[exp_dir] = int(doc["experiment_id"])
        exp_id = experiment_ids[exp_dir]
        run = json.loads((run_dir / "run.json").read_text())
        info, run_id = run["info"], run["info"]["run_id"]
        artifacts = target / "mlartifacts" / str(exp_id) / run_id / "artifacts"
        con.execute("BEGIN")
        con.execute("INSERT INTO runs (run_uuid, name, source_type, user_id, status, start_time, end_time,"
                    " lifecycle_stage, artifact_uri, experiment_id) VALUES (?, ?, 'UNKNOWN', ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, info.get("run_name") or "", info.get("user_id"), info["status"], info.get("start_time"),
                     info.get("end_time"), info["lifecycle_stage"], str(artifacts), exp_id))
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                        [(k, v, run_id) for k, v in run["params"].items()])
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                        [(k, v, run_id) for k, v in run["tags"].items()])
        table = pq.read_table(run_dir / "metrics.parquet", columns=["key", "step", "timestamp", "value"])
        table = table.set_column(0, "key", table.column("key").cast("string"))
        columns = [table.column(name).to_pylist() for name in ("key", "value", "timestamp")]
        columns += [[run_id] * table.num_rows, table.column("step").to_pylist()]
        for start in range(0, table.num_rows, ROWS):
            n = min(ROWS, table.num_rows - start)
            values = [None] * (5 * n)
            for i, column in enumerate(columns):
                values[i::5] = column[start:start + n]
            con.execute("INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES "
                        + ",".join(["(?,?,?,?,?,0)"] * n), values)
        # Each key's latest point: its rows at its highest step (the bundle keeps points sorted).
        top = table.group_by("key").aggregate([("step", "max")])
        at_top = pc.equal(table.column("step"), pc.take(top.column("step_max"),
                                                         pc.index_in(table.column("key"), top.column("key"))))
        latest = {row["key"]: row for row in table.filter(at_top).to_pylist()}
        con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
                        " VALUES (?, ?, ?, ?, 0, ?)",
                        [(k, r["value"], r["timestamp"], r["step"], run_id) for k, r in latest.items()])
        points += table.num_rows
        con.execute("COMMIT")
        for source in (run_dir / "artifacts").rglob("*"):
            if source.is_file():
                dest = artifacts / source.relative_to(run_dir / "artifacts")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
    con.close()
    print(json.dumps({"metric_points": points, "elapsed_seconds": round(time.perf_counter() - began, 3)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
