"""Editing runs of a tracking server in place through MLflow's REST API: runs/log-batch
and runs/delete-tag for tags, runs/update for names, runs/delete and runs/restore for
soft deletion (several runs at once, config.workers at a time), and Databricks'
databricks/runs/delete-runs and restore-runs where the server has them.

The API does not say when a run was deleted, so runs/delete is preceded by a line in
trackport's deletion record (editing.DeletionRecord, fsynced) in the target's state
directory, beside its lock and the id maps of transfers into it.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

from trackport.config import DEFAULT, TransferConfig, state_home
from trackport.domain import DELETED
from trackport.editing import (
    ACTIVE_STATE,
    DELETED_STATE,
    DONE,
    FAILED,
    RECORD_FILE,
    DeletionRecord,
    RunChange,
    RunEditor,
    check_tags,
    now_ms,
)
from trackport.errors import BadInputError, TransientError
from trackport.locking import TargetLock
from trackport.stores.rest.http import API, RestClient, RestError
from trackport.stores.rest.server import ServerInfo
from trackport.stores.rest.sink import MAX_TAGS_PER_BATCH, state_dir_for_url
from trackport.stores.rest.source import RestSource

DELETE_RUNS = f"{API}/databricks/runs/delete-runs"
RESTORE_RUNS = f"{API}/databricks/runs/restore-runs"
# Runs recorded (one fsync) and then changed together: a kill leaves at most this many
# lines of deletions that were not asked for yet, which restore ignores (the runs are active).
_CHUNK = 100


class RestEditor(RestSource, RunEditor):
    """A tracking server's runs, edited in place. write=False opens it for reading only (a
    dry run): no lock, and every change refused."""

    def __init__(
        self, client: RestClient, uri: str, info: ServerInfo, *, config: TransferConfig = DEFAULT, write: bool = True
    ) -> None:
        RestSource.__init__(self, client, uri, info, config=config)
        self._workers = config.workers
        state_dir = state_dir_for_url(state_home() / "targets", client.base_url)
        self._lock = TargetLock(state_dir, client.base_url) if write else None
        self._record = DeletionRecord(state_dir / RECORD_FILE)
        self._bulk: bool | None = None

    def close(self) -> None:
        try:
            RestSource.close(self)
        finally:
            self._release()

    def _post(self, endpoint: str, body: dict) -> dict:
        """One change; MLflow's refusal of it (a bad key, a missing run) is bad input."""
        try:
            return self.client.call("POST", endpoint, body=body)
        except RestError as exc:
            raise BadInputError(f"{self.uri}: {exc}") from None

    def _run_to_edit(self, run_id: str) -> dict[str, str]:
        """The tags of an active run; a missing or deleted one is refused."""
        self._writable()
        try:
            run = self.client.call("GET", f"{API}/runs/get", params={"run_id": run_id})["run"]
        except RestError:
            raise BadInputError(f"no run {run_id!r} in {self.uri}") from None
        if run["info"].get("lifecycle_stage") == DELETED:
            raise BadInputError(f"run {run_id} is deleted; restore it first (trackport runs restore)")
        return {t["key"]: t.get("value", "") for t in (run.get("data") or {}).get("tags") or ()}

    # ---------------------------------------------------------------- one run

    def edit_tags(self, run_id: str, set_tags: Mapping[str, str], delete_keys: Sequence[str]) -> None:
        check_tags(set_tags)
        tags = self._run_to_edit(run_id)
        missing = [key for key in delete_keys if key not in tags]
        if missing:
            raise BadInputError(f"run {run_id} has no tag {missing[0]!r}; nothing was changed")
        batch = [{"key": key, "value": value} for key, value in set_tags.items()]
        for i in range(0, len(batch), MAX_TAGS_PER_BATCH):  # log-batch renames the run for mlflow.runName
            self._post(f"{API}/runs/log-batch", {"run_id": run_id, "tags": batch[i : i + MAX_TAGS_PER_BATCH]})
        for key in delete_keys:
            self._post(f"{API}/runs/delete-tag", {"run_id": run_id, "key": key})

    def rename(self, run_id: str, name: str) -> None:
        if not name:
            raise BadInputError("a run's new name cannot be empty")
        self._run_to_edit(run_id)
        self._post(f"{API}/runs/update", {"run_id": run_id, "run_name": name})

    # ---------------------------------------------------------------- lifecycle

    def delete_runs(self, experiment_id: str, run_ids: Sequence[str]) -> list[RunChange]:
        return self._each(experiment_id, run_ids, f"{API}/runs/delete", DELETED_STATE)

    def restore_runs(self, experiment_id: str, run_ids: Sequence[str]) -> list[RunChange]:
        return self._each(experiment_id, run_ids, f"{API}/runs/restore", ACTIVE_STATE)

    def _each(self, experiment_id: str, run_ids: Sequence[str], endpoint: str, state: str) -> list[RunChange]:
        """One call per run, config.workers at a time; deletions recorded before they are
        asked for, and the record set right after: runs whose deletion failed and runs
        restored are active."""
        self._writable()
        changes: list[RunChange] = []
        with ThreadPoolExecutor(self._workers) as pool:
            for i in range(0, len(run_ids), _CHUNK):
                chunk = list(run_ids[i : i + _CHUNK])
                if state == DELETED_STATE:
                    self._record.write(experiment_id, chunk, DELETED_STATE, now_ms())
                done = list(pool.map(lambda run_id: self._change(endpoint, run_id), chunk))
                active = [c.run_id for c in done if (c.outcome == DONE) == (state == ACTIVE_STATE)]
                self._record.write(experiment_id, active, ACTIVE_STATE, now_ms())
                changes += done
        return changes

    def _change(self, endpoint: str, run_id: str) -> RunChange:
        try:
            self.client.call("POST", endpoint, body={"run_id": run_id})
        except (RestError, TransientError) as exc:  # this run's; fatal errors (auth, unreachable) stop
            return RunChange(run_id, FAILED, str(exc))
        return RunChange(run_id, DONE)

    def deletion_times(self, experiment_id: str) -> Mapping[str, int]:
        return self._record.deletion_times(experiment_id)

    # ---------------------------------------------------------------- Databricks' bulk endpoints

    def bulk_by_time(self) -> bool:
        """Asked once, with an empty restore-runs request (restoring is the harmless
        direction, and without an experiment it names no run): Databricks refuses it
        with MLflow's JSON error, a self-hosted server answers its HTML 404 page."""
        if self._bulk is None:
            try:
                self.client.call("POST", RESTORE_RUNS, body={})
                self._bulk = True
            except RestError as exc:
                self._bulk = exc.error_code != "ENDPOINT_NOT_FOUND"
            except BadInputError:
                self._bulk = False
        return self._bulk

    def _deleted_ids(self, experiment_id: str) -> set[str]:
        infos = (data["info"] for data in self._search_runs(experiment_id, True, None))
        return {info.get("run_id") or info["run_uuid"] for info in infos if info.get("lifecycle_stage") == DELETED}

    def delete_created_before(self, experiment_id: str, created_before: int, run_ids: Sequence[str]) -> list[RunChange]:
        self._writable()
        if not run_ids:
            return []
        self._record.write(experiment_id, run_ids, DELETED_STATE, now_ms())
        body = {"experiment_id": experiment_id, "max_timestamp_millis": created_before, "max_runs": len(run_ids)}
        self._post(DELETE_RUNS, body)
        deleted = self._deleted_ids(experiment_id)
        changes = [RunChange(r, DONE) if r in deleted else RunChange(r, FAILED, "the server's bulk delete left it active")
                   for r in run_ids]
        self._record.write(experiment_id, [c.run_id for c in changes if c.outcome != DONE], ACTIVE_STATE, now_ms())
        return changes

    def restore_deleted_after(self, experiment_id: str, deleted_after: int, max_runs: int) -> list[RunChange]:
        self._writable()
        before = self._deleted_ids(experiment_id)
        body = {"experiment_id": experiment_id, "min_timestamp_millis": deleted_after, "max_runs": max_runs}
        self._post(RESTORE_RUNS, body)
        restored = sorted(before - self._deleted_ids(experiment_id))
        self._record.write(experiment_id, restored, ACTIVE_STATE, now_ms())
        return [RunChange(r, DONE) for r in restored]
