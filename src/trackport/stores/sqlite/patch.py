"""A run of a local sqlite store brought up to date in place (trackport sync): SqliteStore
as a trackport.patching.RunPatcher.

The change is made with the store's own machinery, as put_run writes a run: artifact files
first (each replacing the file of its path atomically, run_folders.replace_files), metric
points prepared on the caller's thread (metrics.prepare_points), then every row change in
one unit of the group-commit writer, committed whole or not at all, in the order
trackport.patching documents: restore, name/status/end time, params, tags, metric points
(latest_metrics kept by MLflow's rule), dataset inputs, delete. A kill between the files
and the commit leaves the run's rows as they were and its files already the source's: the
next sync computes what is left. A changed param is rewritten (MLflow never changes one, a
local store can), so nothing is lost here.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from trackport.config import TransferConfig
from trackport.domain import ACTIVE, DELETED, TargetRunId
from trackport.errors import UnitError
from trackport.patching import RunPatch, RunPatcher
from trackport.stores.base import RunContent, RunWriteResult, SourceStore
from trackport.stores.mlflow_db.models import DEFAULT_WORKSPACE
from trackport.stores.sqlite.metrics import collapsed_loss, insert_points, metric_inserts, prepare_points
from trackport.stores.sqlite.places import artifacts_folder
from trackport.stores.sqlite.rows import Rows
from trackport.stores.sqlite.run_folders import replace_files


class SqlitePatching(RunPatcher):
    """patch_run and rename_experiment for SqliteStore, which gives what is declared below:
    its rows, its writer (through _write, under the lock it holds while open for writing),
    its reads of committed rows, and the refusal of a store opened read-only."""

    uri: str
    _config: TransferConfig
    _rows: Rows
    _check_writable: Callable[[], None]
    _read: Callable[[str, tuple], list]
    _write: Callable[[Callable[[sqlite3.Cursor], Any], str], Any]  # (unit, what it writes): committed
    state_dir: Callable[[], Path]
    _destination: Path | None  # a server's artifacts destination (stores.sqlite.places)

    def target_reader(self) -> SourceStore:
        return self  # type: ignore[return-value]  # SqliteStore is a SqliteSource

    def patch_run(self, target_run_id: str, patch: RunPatch, content: RunContent) -> RunWriteResult:
        self._check_writable()
        run_id = str(target_run_id)
        if patch.lifecycle_stage not in (None, ACTIVE, DELETED):
            raise UnitError(f"run {run_id}: no lifecycle stage {patch.lifecycle_stage!r} (active or deleted)")
        rows = self._read("SELECT experiment_id, artifact_uri FROM runs WHERE run_uuid = ?", (run_id,))
        if not rows:
            raise UnitError(f"run {run_id}: not in {self.uri}, so it cannot be updated")
        exp_id, artifact_uri = rows[0]
        result = RunWriteResult(target_run_id=TargetRunId(run_id))
        if patch.artifacts:  # before the rows, as put_run writes them: slow sources hold up no other run
            artifact_dir = artifacts_folder(artifact_uri, run_id, "run", self._destination)
            if artifact_dir is None:
                raise UnitError(f"run {run_id}: the target run has no artifact location")
            replace_files(run_id, artifact_dir, content, patch.artifacts, result)
        batches = patch.metric_points() if patch.metric_points is not None else iter(())
        in_memory, ahead = self._config.sqlite_in_memory_points, self._config.sqlite_ahead_points
        with prepare_points(batches, self.state_dir(), in_memory) as points:
            inserts = metric_inserts(run_id, points, ahead)

            def change(cursor: sqlite3.Cursor) -> int:
                if cursor.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is None:
                    raise UnitError(f"run {run_id}: not in {self.uri}, so it cannot be updated")
                if patch.lifecycle_stage == ACTIVE:
                    _set_stage(cursor, run_id, ACTIVE, None)
                if patch.run_name is not None:
                    self._rows.set_run_name(cursor, run_id, patch.run_name)
                if patch.status is not None:
                    cursor.execute("UPDATE runs SET status = ? WHERE run_uuid = ?", (patch.status, run_id))
                if patch.end_time is not None:
                    cursor.execute("UPDATE runs SET end_time = ? WHERE run_uuid = ?", (patch.end_time, run_id))
                self._rows.set_params(cursor, run_id, {**patch.new_params, **patch.changed_params})
                self._rows.set_tags(cursor, run_id, patch.set_tags, patch.delete_tags)
                stored = insert_points(cursor, run_id, points, inserts) if points.source_points else 0
                self._rows.insert_inputs(cursor, run_id, patch.inputs, exp_id)
                if patch.lifecycle_stage == DELETED:
                    _set_stage(cursor, run_id, DELETED, _now() if patch.deleted_time is None else patch.deleted_time)
                return stored

            result.metric_points = self._write(change, f"run {run_id}")
        loss = collapsed_loss(points, result.metric_points)
        if loss is not None:
            result.losses.append(loss)
        return result

    def rename_experiment(self, target_experiment_id: str, name: str) -> None:
        self._check_writable()
        if not name:
            raise UnitError(f"experiment {target_experiment_id}: a new name cannot be empty")
        try:
            exp_id = int(target_experiment_id)
        except ValueError:
            raise UnitError(f"no experiment {target_experiment_id!r} in {self.uri}") from None
        in_workspace = "workspace" in self._rows.columns["experiments"]

        def change(cursor: sqlite3.Cursor) -> None:
            row = cursor.execute(
                f"SELECT name, {'workspace' if in_workspace else 'NULL'} FROM experiments WHERE experiment_id = ?",
                (exp_id,),
            ).fetchone()
            if row is None:
                raise UnitError(f"no experiment {exp_id} in {self.uri}")
            if row[0] == name:
                return
            same_space, args = ("workspace = ? AND ", (row[1] or DEFAULT_WORKSPACE,)) if in_workspace else ("", ())
            other = cursor.execute(
                f"SELECT experiment_id FROM experiments WHERE {same_space}name = ?", (*args, name)
            ).fetchone()
            if other is not None:
                raise UnitError(
                    f"experiment {exp_id} cannot be renamed to {name!r}: experiment {other[0]} of {self.uri} has that name"
                )
            cursor.execute(  # as MLflow's rename_experiment: the update time is now
                "UPDATE experiments SET name = ?, last_update_time = ? WHERE experiment_id = ?", (name, _now(), exp_id)
            )

        self._write(change, f"experiment {exp_id}")


def _set_stage(cursor: sqlite3.Cursor, run_id: str, stage: str, deleted_time: int | None) -> None:
    """MLflow's soft delete and restore: a deleted run has its deletion time, an active one none."""
    cursor.execute(
        "UPDATE runs SET lifecycle_stage = ?, deleted_time = ? WHERE run_uuid = ?", (stage, deleted_time, run_id)
    )


def _now() -> int:
    return int(time.time() * 1000)
