"""Runs and their dataset inputs, and logged models, as rows of MLflow's sqlite tables,
written inside the writer's transaction (the cursor is the group-commit writer's)."""
from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Mapping, Sequence

from trackport.domain import RUN_NAME_TAG, DatasetInput, Experiment, Run
from trackport.kinds import Unit
from trackport.models import metric_value_from_json
from trackport.stores.mlflow_db.models import DEFAULT_WORKSPACE, MODEL_INPUT, MODEL_OUTPUT
from trackport.stores.mlflow_db.sqlite import read_only_connection
from trackport.stores.sqlite.schema import DEFAULT_EXPERIMENT_ID, experiment_artifact_location

WRITTEN_TABLES = (
    "experiments", "experiment_tags", "runs", "tags", "params", "datasets", "inputs", "input_tags",
    # MLflow 3's logged models and the model registry (stores/sqlite/models.py)
    "logged_models", "logged_model_params", "logged_model_tags", "logged_model_metrics",
    "registered_models", "registered_model_tags", "model_versions", "model_version_tags", "registered_model_aliases",
)


SET_TAG = (
    "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?) "
    "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value"
)
SET_PARAM = (
    "INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?) "
    "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value"
)
_STATUS_NUMBERS = {"UNSPECIFIED": 0, "PENDING": 1, "READY": 2, "FAILED": 3}  # logged_models.status


class Rows:
    """Inserts into the tables a sink writes, checked against the columns the database has
    (read once, when the store is opened)."""

    def __init__(self, columns: Mapping[str, frozenset[str]]) -> None:
        # A table the schema lacks has no columns (an older MLflow's schema has no logged models).
        self.columns: dict[str, frozenset[str]] = {t: frozenset(columns.get(t, ())) for t in WRITTEN_TABLES}

    @classmethod
    def of_sqlite(cls, path: Path) -> "Rows":
        """The tables of the sqlite database at path (a server's PostgreSQL or MySQL database
        is read from its information_schema: stores.serverdb)."""
        with closing(read_only_connection(path)) as con:
            return cls({t: frozenset(row[1] for row in con.execute(f"PRAGMA table_info({t})")) for t in WRITTEN_TABLES})

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

    def put_experiment(
        self, cursor: sqlite3.Cursor, experiment: Experiment, artifact_root: str, *, default_is_ours: bool
    ) -> tuple[int, bool]:
        """The experiment of that name (made, at the source's id where free): (id, made here).
        default_is_ours: the target's Default experiment, while it holds no runs, is made
        equal to the source's (a store this transfer made; a server's database holding nothing)."""
        in_workspace = "workspace" in self.columns["experiments"]
        where, args = ("name = ? AND workspace = ?", (experiment.name, DEFAULT_WORKSPACE)) if in_workspace else (
            "name = ?", (experiment.name,))
        existing = cursor.execute(f"SELECT experiment_id FROM experiments WHERE {where}", args).fetchone()
        made_here = existing is None
        if existing is not None:
            exp_id = existing[0]
            has_runs = cursor.execute("SELECT 1 FROM runs WHERE experiment_id = ? LIMIT 1", (exp_id,)).fetchone()
            made_here = default_is_ours and exp_id == DEFAULT_EXPERIMENT_ID and has_runs is None
            if made_here:
                cursor.execute(
                    "UPDATE experiments SET lifecycle_stage = ?, creation_time = ?, last_update_time = ? "
                    "WHERE experiment_id = ?",
                    (experiment.lifecycle_stage, experiment.creation_time, experiment.last_update_time, exp_id),
                )
        else:
            values: dict[str, Any] = {"name": experiment.name, "lifecycle_stage": experiment.lifecycle_stage}
            if in_workspace:
                values["workspace"] = DEFAULT_WORKSPACE
            # Omitted times are now, as MLflow's models make them (the columns have no default).
            values["creation_time"] = now_or(experiment.creation_time)
            values["last_update_time"] = now_or(experiment.last_update_time)
            wanted = _int_or_none(experiment.experiment_id)
            if wanted is not None:
                taken = cursor.execute("SELECT 1 FROM experiments WHERE experiment_id = ?", (wanted,)).fetchone()
                if taken is None:
                    values["experiment_id"] = wanted
            self.insert(cursor, "experiments", [values])
            exp_id = cursor.execute(f"SELECT experiment_id FROM experiments WHERE {where}", args).fetchone()[0]
            cursor.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (experiment_artifact_location(artifact_root, exp_id), exp_id),
            )
        have = {key for (key,) in cursor.execute("SELECT key FROM experiment_tags WHERE experiment_id = ?", (exp_id,))}
        self.insert(cursor, "experiment_tags", [
            {"key": k, "value": v, "experiment_id": exp_id} for k, v in experiment.tags.items() if k not in have
        ])
        return exp_id, made_here

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

    def insert_inputs(self, cursor: sqlite3.Cursor, run_id: str, inputs: Sequence[DatasetInput], exp_id: int) -> None:
        """The run's dataset inputs: the experiment's dataset of that name and digest (made
        if missing), linked to the run unless it already is (MLflow's log-inputs skips
        those too: one link per dataset and run, which the table's key demands)."""
        for ds in inputs:
            row = cursor.execute(
                "SELECT dataset_uuid FROM datasets WHERE experiment_id = ? AND name = ? AND digest = ?",
                (exp_id, ds.name, ds.digest),
            ).fetchone()
            if row is not None:
                dataset_uuid = row[0]
                linked = cursor.execute(
                    "SELECT 1 FROM inputs WHERE source_type = 'DATASET' AND source_id = ? "
                    "AND destination_type = 'RUN' AND destination_id = ?",
                    (dataset_uuid, run_id),
                ).fetchone()
                if linked is not None:
                    continue
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
                "destination_id": run_id,
                "step": 0,
            }])
            self.insert(cursor, "input_tags",
                        [{"input_uuid": input_uuid, "name": k, "value": v} for k, v in ds.tags.items()])

    # ---------------------------------------------------------------- a run changed in place

    def set_run_name(self, cursor: sqlite3.Cursor, run_id: str, name: str) -> None:
        """runs.name and the mlflow.runName tag, kept equal as MLflow keeps them (an empty
        name has no tag, as insert_run writes it)."""
        cursor.execute("UPDATE runs SET name = ? WHERE run_uuid = ?", (name, run_id))
        if name:
            cursor.execute(SET_TAG, (RUN_NAME_TAG, name, run_id))
        else:
            cursor.execute("DELETE FROM tags WHERE run_uuid = ? AND key = ?", (run_id, RUN_NAME_TAG))

    def set_params(self, cursor: sqlite3.Cursor, run_id: str, params: Mapping[str, str]) -> None:
        """Params added, or changed where the run has them (MLflow never changes one; a local
        store can)."""
        cursor.executemany(SET_PARAM, [(k, v, run_id) for k, v in params.items()])

    def set_tags(self, cursor: sqlite3.Cursor, run_id: str, tags: Mapping[str, str], delete: Sequence[str] = ()) -> None:
        """Tags deleted (those the run lacks are no error), then set; setting mlflow.runName
        renames the run, as MLflow's set_tag does."""
        cursor.executemany("DELETE FROM tags WHERE run_uuid = ? AND key = ?", [(run_id, k) for k in delete])
        cursor.executemany(SET_TAG, [(k, v, run_id) for k, v in tags.items()])
        if RUN_NAME_TAG in tags:
            cursor.execute("UPDATE runs SET name = ? WHERE run_uuid = ?", (tags[RUN_NAME_TAG], run_id))

    def insert_logged_model(self, cursor: sqlite3.Cursor, unit: Unit, exp_id: int, artifact_location: str) -> None:
        """A logged model unit's rows: the model, its params, tags and metrics, and its links to runs."""
        body, model_id = unit.body, unit.unit_id
        self.insert(cursor, "logged_models", [{
            "model_id": model_id,
            "experiment_id": exp_id,
            "name": unit.name,
            "artifact_location": artifact_location,
            "creation_timestamp_ms": now_or(body.get("creation_timestamp")),
            "last_updated_timestamp_ms": now_or(body.get("last_updated_timestamp")),
            "status": _STATUS_NUMBERS.get(body.get("status") or "", 0),
            "lifecycle_stage": body.get("lifecycle_stage") or "active",
            "model_type": body.get("model_type"),
            "source_run_id": unit.target("run"),
            "status_message": body.get("status_message"),
        }])
        owner = {"model_id": model_id, "experiment_id": exp_id}
        self.insert(cursor, "logged_model_params", [
            {**owner, "param_key": k, "param_value": v} for k, v in body.get("params", {}).items()
        ])
        self.insert(cursor, "logged_model_tags", [
            {**owner, "tag_key": k, "tag_value": v} for k, v in body.get("tags", {}).items()
        ])
        metrics = []
        for metric in body.get("metrics", []):
            name, digest = metric.get("dataset_name"), metric.get("dataset_digest")
            metrics.append({
                **owner,
                "metric_name": metric["key"],
                "metric_timestamp_ms": metric["timestamp"],
                "metric_step": metric["step"],
                # sqlite holds a NaN as NULL, which trackport reads back as NaN (MLflow's own
                # store writes 0 instead, and loses it); ±inf are held as they are.
                "metric_value": metric_value_from_json(metric["value"]),
                # The run it was logged in; one the target lacks keeps its source id (a loss
                # the engine records): the column takes no NULL.
                "run_id": unit.refs.get(metric["run"], "") if metric.get("run") else "",
                "dataset_uuid": _dataset_uuid(cursor, exp_id, name, digest),
                "dataset_name": name,
                "dataset_digest": digest,
            })
        self.insert(cursor, "logged_model_metrics", metrics)
        self.insert(cursor, "inputs", _link_rows(unit, "step" in self.columns["inputs"]))


def _int_or_none(value: str) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 2**63 else None


def now_or(milliseconds: int | None) -> int:
    """A time a unit gives, else now (as MLflow sets it: the columns have no default)."""
    return int(time.time() * 1000) if milliseconds is None else milliseconds


def _link_rows(unit: Unit, with_step: bool) -> list[dict]:
    """The inputs rows linking a logged model to the runs that output it (at a step) or took
    it as an input, for the runs the target holds (one it lacks is a loss the engine records)."""
    rows = []
    for link in unit.body.get("links", []):
        run_id = unit.target(link["run"])
        if run_id is None:
            continue
        source_type, destination_type = MODEL_OUTPUT if link["direction"] == "output" else MODEL_INPUT
        row = {"input_uuid": uuid.uuid4().hex, "source_type": source_type, "source_id": run_id,
               "destination_type": destination_type, "destination_id": unit.unit_id}
        rows.append({**row, "step": int(link.get("step") or 0)} if with_step else row)
    return rows


def _dataset_uuid(cursor: sqlite3.Cursor, exp_id: int, name: str | None, digest: str | None) -> str | None:
    """The target experiment's dataset a logged model's metric was logged against, if it holds it."""
    if not name or not digest:
        return None
    row = cursor.execute(
        "SELECT dataset_uuid FROM datasets WHERE experiment_id = ? AND name = ? AND digest = ?", (exp_id, name, digest)
    ).fetchone()
    return row[0] if row else None
