"""Editing runs of a local MLflow sqlite store in place: tags, names, soft deletion.

Read through SqliteSource (read-only); written over one raw sqlite3 connection, one
transaction per call, with MLflow's semantics: a deleted run has lifecycle_stage
'deleted' and its deleted_time, a restored one 'active' and no deleted_time; a rename
sets runs.name and the mlflow.runName tag; tags of a deleted run are not edited. The
store is written only at the schema revision the installed MLflow expects, under its
lock, as a transfer into it would be (stores/sqlite/files.open_for_writing).

MLflow 3's own delete_run also removes the assessments of traces whose source is the run,
which no restore brings back; trackport's delete leaves them, so a restore gives the run
back whole (as a tracking server's runs/delete would not).
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Callable, Mapping, Sequence, TypeVar

from trackport.config import DEFAULT, TransferConfig, state_home
from trackport.domain import ACTIVE, DELETED, RUN_NAME_TAG
from trackport.editing import DONE, FAILED, SKIPPED, RunChange, RunEditor, check_tags, now_ms
from trackport.errors import BadInputError, storage_error
from trackport.locking import TargetLock
from trackport.stores.mlflow_db.sqlite import SqliteSource
from trackport.stores.mlflow_db.tables import chunks
from trackport.stores.mlflow_db.uri import split_uri_options
from trackport.stores.sqlite.files import default_artifact_root, open_for_writing, sqlite_path_from_uri, sqlite_state_dir
from trackport.stores.sqlite.group_commit import BUSY_TIMEOUT_S
from trackport.stores.sqlite.rows import SET_TAG
from trackport.stores.sqlite.schema import artifact_root_uri, installed_mlflow_version, schema_template

T = TypeVar("T")


class SqliteEditor(SqliteSource, RunEditor):
    """A local sqlite store's runs, edited in place. write=False opens it for reading only
    (a dry run): no lock, no schema check, and every change refused."""

    knows_deletion_times = True

    def __init__(self, uri: str, *, config: TransferConfig = DEFAULT, write: bool = True) -> None:
        bare, artifacts_destination = split_uri_options(uri)
        path = sqlite_path_from_uri(bare)
        if not path.is_file():  # an edit never makes a store
            raise BadInputError(f"no MLflow sqlite store at {path}: check the path (sqlite:///relative or sqlite:////absolute)")
        if write:
            self._lock = TargetLock(sqlite_state_dir(path), str(path))
            try:
                template = schema_template(state_home(), installed_mlflow_version())
                # The path exists, so nothing is created: the artifact root is never used.
                open_for_writing(path, template, artifact_root_uri(str(default_artifact_root(path))))
            except (OSError, sqlite3.Error) as exc:
                self.close()
                raise (storage_error(exc, str(path)) or BadInputError(f"cannot open {path} for writing: {exc}")) from None
            except BaseException:
                self.close()
                raise
        SqliteSource.__init__(self, uri, path, artifacts_destination=artifacts_destination, config=config)

    def close(self) -> None:
        try:
            SqliteSource.close(self)
        finally:
            self._release()

    def _transaction(self, change: Callable[[sqlite3.Cursor], T]) -> T:
        """change(cursor) in one transaction, committed whole or not at all."""
        self._writable()
        try:
            with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)) as con:
                cursor = con.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    result = change(cursor)
                    cursor.execute("COMMIT")
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise
                return result
        except sqlite3.Error as exc:
            raise (storage_error(exc, str(self.path)) or BadInputError(f"{self.path}: {exc}")) from None

    def _active_run(self, cursor: sqlite3.Cursor, run_id: str) -> None:
        row = cursor.execute("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        if row is None:
            raise BadInputError(f"no run {run_id!r} in {self.uri}")
        if row[0] == DELETED:
            raise BadInputError(f"run {run_id} is deleted; restore it first (trackport runs restore)")

    # ---------------------------------------------------------------- one run

    def edit_tags(self, run_id: str, set_tags: Mapping[str, str], delete_keys: Sequence[str]) -> None:
        check_tags(set_tags)

        def change(cursor: sqlite3.Cursor) -> None:
            self._active_run(cursor, run_id)
            for key in delete_keys:
                if cursor.execute("DELETE FROM tags WHERE run_uuid = ? AND key = ?", (run_id, key)).rowcount == 0:
                    raise BadInputError(f"run {run_id} has no tag {key!r}; nothing was changed")
            cursor.executemany(SET_TAG, [(key, value, run_id) for key, value in set_tags.items()])
            if RUN_NAME_TAG in set_tags:  # MLflow's set_tag renames the run too
                cursor.execute("UPDATE runs SET name = ? WHERE run_uuid = ?", (set_tags[RUN_NAME_TAG], run_id))

        self._transaction(change)

    def rename(self, run_id: str, name: str) -> None:
        if not name:
            raise BadInputError("a run's new name cannot be empty")

        def change(cursor: sqlite3.Cursor) -> None:
            self._active_run(cursor, run_id)
            cursor.execute("UPDATE runs SET name = ? WHERE run_uuid = ?", (name, run_id))
            cursor.execute(SET_TAG, (RUN_NAME_TAG, name, run_id))

        self._transaction(change)

    # ---------------------------------------------------------------- lifecycle

    def delete_runs(self, experiment_id: str, run_ids: Sequence[str]) -> list[RunChange]:
        return self._set_stage(experiment_id, run_ids, DELETED)

    def restore_runs(self, experiment_id: str, run_ids: Sequence[str]) -> list[RunChange]:
        return self._set_stage(experiment_id, run_ids, ACTIVE)

    def _set_stage(self, experiment_id: str, run_ids: Sequence[str], stage: str) -> list[RunChange]:
        """Every run to the stage in one transaction, deleted ones at one deletion time; a
        run already there (changed meanwhile) is skipped, one not in the experiment fails."""
        deleted_time = now_ms() if stage == DELETED else None
        already = "already deleted" if stage == DELETED else "already active"

        def change(cursor: sqlite3.Cursor) -> list[RunChange]:
            stages: dict[str, str] = {}
            for chunk in chunks(list(run_ids)):
                marks = ", ".join("?" * len(chunk))
                stages.update(cursor.execute(
                    f"SELECT run_uuid, lifecycle_stage FROM runs WHERE experiment_id = ? AND run_uuid IN ({marks})",
                    (int(experiment_id), *chunk),
                ).fetchall())
            to_change = [r for r in run_ids if stages.get(r, stage) != stage]
            for chunk in chunks(to_change):
                marks = ", ".join("?" * len(chunk))
                cursor.execute(
                    f"UPDATE runs SET lifecycle_stage = ?, deleted_time = ? WHERE run_uuid IN ({marks})",
                    (stage, deleted_time, *chunk),
                )
            return [
                RunChange(r, FAILED, f"not a run of experiment {experiment_id}") if r not in stages
                else RunChange(r, SKIPPED, already) if stages[r] == stage
                else RunChange(r, DONE)
                for r in run_ids
            ]

        return self._transaction(change)
