"""Editing runs in place: the interface every editable store implements (a tracking server
and a local sqlite store), and trackport's own record of when it deleted runs where the
store does not say.

An editor is also its store's SourceStore (trackport.stores.base, which this layer cannot
name): runs are read through it and changed through the methods below. Each method is one
change as MLflow makes it (a sqlite store: one transaction per call) and says what became
of every run it was given; nothing here chooses runs (trackport.runs.bulk does) or prints.
"""
from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from trackport._files import drop_torn_tail
from trackport.domain import MAX_TAG_VALUE, key_problem
from trackport.errors import BadInputError, storage_error
from trackport.locking import TargetLock

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


RECORD_FILE = "deletions.jsonl"
DELETED_STATE, ACTIVE_STATE = "deleted", "active"


@dataclass(frozen=True)
class RunChange:
    """What became of one run an editor was asked to delete or restore."""

    run_id: str
    outcome: str  # DONE | SKIPPED | FAILED
    reason: str | None = None  # why it was skipped or failed


def check_tags(tags: Mapping[str, str]) -> None:
    """Refuse (BadInputError) a run tag MLflow would refuse, before anything is changed."""
    for key, value in tags.items():
        problem = key_problem(key)
        if problem:
            raise BadInputError(f"tag key {key[:80]!r} is refused: {problem}")
        if len(value) > MAX_TAG_VALUE:
            raise BadInputError(f"the value of tag {key!r} is longer than {MAX_TAG_VALUE} characters")


def now_ms() -> int:
    return int(time.time() * 1000)


class RunEditor(ABC):
    """A store whose runs trackport can tag, rename, delete and restore. Opened by
    trackport.opening.open_editor, which takes the store's lock (one writer per target)
    until close()."""

    uri: str
    # The store keeps each deleted run's deletion time (Run.deleted_time: sqlite's
    # runs.deleted_time). Where it does not (a server's REST API), deletion_times() gives
    # the times trackport recorded when it deleted runs itself.
    knows_deletion_times: bool = False
    # The target's lock while the editor may write; None when opened for reading only.
    _lock: TargetLock | None = None

    def _writable(self) -> None:
        """Refuse a change through an editor opened for reading only (a dry run)."""
        if self._lock is None:
            raise BadInputError(f"{self.uri} was opened for reading only")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @abstractmethod
    def edit_tags(self, run_id: str, set_tags: Mapping[str, str], delete_keys: Sequence[str]) -> None:
        """Set and delete tags of one active run, as MLflow does (setting mlflow.runName
        renames the run). A key to delete that the run does not have is refused before
        anything changes (BadInputError), as is a deleted or missing run."""

    @abstractmethod
    def rename(self, run_id: str, name: str) -> None:
        """Set the run's name and its mlflow.runName tag (MLflow's update-run)."""

    @abstractmethod
    def delete_runs(self, experiment_id: str, run_ids: Sequence[str]) -> list[RunChange]:
        """Mark the runs deleted (MLflow's soft delete; a restore brings them back whole).
        A store that keeps no deletion times records them first (DeletionRecord)."""

    @abstractmethod
    def restore_runs(self, experiment_id: str, run_ids: Sequence[str]) -> list[RunChange]:
        """Make the deleted runs active again."""

    def deletion_times(self, experiment_id: str) -> Mapping[str, int]:
        """When trackport deleted the experiment's runs that are still deleted, for a
        store that does not keep deletion times itself; empty where it does."""
        return {}

    def bulk_by_time(self) -> bool:
        """Whether the store deletes and restores runs by time itself (Databricks'
        databricks/runs/delete-runs and restore-runs), asked once."""
        return False

    def delete_created_before(self, experiment_id: str, created_before: int, run_ids: Sequence[str]) -> list[RunChange]:
        """The store's own bulk delete of the active runs created at or before the time,
        at most len(run_ids) of them; run_ids are the runs expected to go (recorded first),
        and the changes say which did. Only where bulk_by_time()."""
        raise NotImplementedError

    def restore_deleted_after(self, experiment_id: str, deleted_after: int, max_runs: int) -> list[RunChange]:
        """The store's own bulk restore of runs deleted at or after the time (by its own
        clock, which it does not show); the changes name the runs it restored. Only where
        bulk_by_time()."""
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None:
        """Release the store and its lock."""

    def __enter__(self) -> RunEditor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeletionRecord:
    """trackport's durable record of the runs it deleted and restored in a store whose API
    does not say when a run was deleted: JSON Lines in the target's state directory, one
    line per run and change, fsynced before the change is asked for (a kill cannot lose a
    deletion), the latest line of a run deciding. A line whose change then did not happen
    is harmless: only runs the store holds deleted are looked up."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, experiment_id: str, run_ids: Iterable[str], state: str, at: int) -> None:
        lines = "".join(
            json.dumps({"run_id": r, "experiment_id": experiment_id, "state": state, "at": at, "by": "trackport"},
                       sort_keys=True) + "\n"
            for r in run_ids
        )
        if not lines:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as record:
                drop_torn_tail(record)
                record.write(lines.encode())
                record.flush()
                os.fsync(record.fileno())
        except OSError as exc:
            raise (storage_error(exc, str(self.path)) or exc) from None

    def deletion_times(self, experiment_id: str) -> dict[str, int]:
        """Run id -> when trackport deleted it, for the experiment's runs whose latest line
        is a deletion."""
        latest: dict[str, dict] = {}
        if not self.path.exists():
            return {}
        with open(self.path, encoding="utf-8") as record:
            for line in record:
                if not line.endswith("\n"):
                    break  # torn by a kill while appending: that change was never asked for
                entry = json.loads(line)
                if entry.get("experiment_id") == experiment_id:
                    latest[entry["run_id"]] = entry
        return {r: e["at"] for r, e in latest.items() if e["state"] == DELETED_STATE}
