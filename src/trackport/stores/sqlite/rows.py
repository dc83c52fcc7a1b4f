"""Runs and their dataset inputs as rows of MLflow's sqlite tables, written inside the
writer's transaction (the cursor is the group-commit writer's)."""
from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from trackport.domain import RUN_NAME_TAG, Run
from trackport.stores.mlflow_db.sqlite import read_only_connection

WRITTEN_TABLES = ("experiments", "experiment_tags", "runs", "tags", "params", "datasets", "inputs", "input_tags")


class Rows:
    """Inserts into the tables a sink writes, checked against the columns the database has
    (read once, when the store is opened)."""

    def __init__(self, path: Path) -> None:
        with closing(read_only_connection(path)) as con:
            self.columns: dict[str, frozenset[str]] = {
                t: frozenset(row[1] for row in con.execute(f"PRAGMA table_info({t})")) for t in WRITTEN_TABLES
            }

    def insert(self, cursor: sqlite3.Cursor, table: str, rows: list[dict[str, Any]]) -> None:
        """INSERT rows (dicts with the same keys) into one of MLflow's tables."""
        if not rows:
            return
        columns = list(rows[0])
        unknown = [c for c in columns if c not in self.columns[table]]
        if unknown:  # a column this schema does not have: a bug here, not bad input
            raise RuntimeError(f"{table} has no column {unknown[0]!r}")
        cursor.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[c] for c in columns) for row in rows],
        )

    def insert_run(self, cursor: sqlite3.Cursor, run: Run, exp_id: int, artifact_uri: str) -> None:
        tags = dict(run.tags)
        name = run.run_name or tags.get(RUN_NAME_TAG, "")
        if name:
            tags[RUN_NAME_TAG] = name  # MLflow keeps runs.name and this tag equal
        self.insert(cursor, "runs", [{
            "run_uuid": run.run_id,
            "name": name,
            "source_type": "UNKNOWN",
            "source_name": "",
            "entry_point_name": "",
            "user_id": run.user_id,
            "status": run.status,
            "start_time": run.start_time,
            "end_time": run.end_time,
            "deleted_time": run.deleted_time,
            "source_version": "",
            "lifecycle_stage": run.lifecycle_stage,
            "artifact_uri": artifact_uri,
            "experiment_id": exp_id,
        }])
        self.insert(cursor, "params", [{"key": k, "value": v, "run_uuid": run.run_id} for k, v in run.params.items()])
        self.insert(cursor, "tags", [{"key": k, "value": v, "run_uuid": run.run_id} for k, v in tags.items()])

    def insert_inputs(self, cursor: sqlite3.Cursor, run: Run, exp_id: int) -> None:
        for ds in run.inputs:
            row = cursor.execute(
                "SELECT dataset_uuid FROM datasets WHERE experiment_id = ? AND name = ? AND digest = ?",
                (exp_id, ds.name, ds.digest),
            ).fetchone()
            if row is not None:
                dataset_uuid = row[0]
            else:
                dataset_uuid = uuid.uuid4().hex
                self.insert(cursor, "datasets", [{
                    "dataset_uuid": dataset_uuid,
                    "experiment_id": exp_id,
                    "name": ds.name,
                    "digest": ds.digest,
                    "dataset_source_type": ds.source_type,
                    "dataset_source": ds.source,
                    "dataset_schema": ds.schema,
                    "dataset_profile": ds.profile,
                }])
            input_uuid = uuid.uuid4().hex
            self.insert(cursor, "inputs", [{
                "input_uuid": input_uuid,
                "source_type": "DATASET",
                "source_id": dataset_uuid,
                "destination_type": "RUN",
                "destination_id": run.run_id,
                "step": 0,
            }])
            self.insert(cursor, "input_tags",
                        [{"input_uuid": input_uuid, "name": k, "value": v} for k, v in ds.tags.items()])
