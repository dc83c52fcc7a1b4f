"""Earlier copies of source units in a tracking server, found by their provenance tags.

A server gives every run a new id, so each run trackport writes there names its source
run in a tag (provenance.SOURCE_RUN_ID_TAG), and gets a completion tag written last. A
run with the first and without the second is the partial copy of an interrupted
transfer (or of a runs/create whose answer was lost): it is deleted before the run is
written again, so it never passes for an ordinary run. Logged models, registered models
and model versions carry provenance.SOURCE_UNIT_TAG and the same completion tag
(model_copies.py).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Iterator

from trackport.domain import DELETED, Run
from trackport.provenance import COMPLETE_TAG, COMPLETE_VALUE, SOURCE_RUN_ID_TAG
from trackport.stores.rest.http import API, NotFoundError, RestClient
_SIMPLE_ID = re.compile(r"^[\w\-]+$")


class ReadOnce:
    """Per target experiment, an index read from the server once, by the first worker that
    asks (the others wait for it), then kept up to date under `lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._indexes: dict[str, dict] = {}
        self._reading: dict[str, threading.Lock] = {}

    def get(self, key: str, read) -> dict:
        with self.lock:
            index = self._indexes.get(key)
            if index is not None:
                return index
            reading = self._reading.setdefault(key, threading.Lock())
        with reading:
            with self.lock:
                index = self._indexes.get(key)
            if index is None:
                index = read()
                with self.lock:
                    self._indexes[key] = index
            return index

    def peek(self, key: str) -> dict | None:
        """The index when it was read already (call under lock)."""
        return self._indexes.get(key)

    def forget(self, key: str) -> None:
        with self.lock:
            self._indexes.pop(key, None)


@dataclass
class Copy:
    """A run in the target that names a source run in its provenance tag."""

    target_run_id: str
    complete: bool
    lifecycle_stage: str


def _tags(found: dict) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in found.get("data", {}).get("tags", [])}


def _run_id(info: dict) -> str:
    return info.get("run_id") or info["run_uuid"]


class Copies:
    """For each target experiment, the runs that carry a provenance tag: searched once,
    then kept up to date with what this sink writes and deletes. Safe for the engine's
    workers to share."""

    def __init__(self, client: RestClient, *, search_page: int) -> None:
        self._client = client
        self._search_page = search_page
        # target experiment id -> {source run id -> copies found in the target}
        self._indexes = ReadOnce()
        self._lock = self._indexes.lock

    def forget(self, target_experiment_id: str) -> None:
        """The experiment changed in ways the index cannot follow (it was restored, which
        restores its runs): search it again when next asked."""
        self._indexes.forget(target_experiment_id)

    def _of(self, target_experiment_id: str) -> dict[str, list[Copy]]:
        return self._indexes.get(target_experiment_id, lambda: self._read(target_experiment_id))

    def _read(self, target_experiment_id: str) -> dict[str, list[Copy]]:
        """Every run of the experiment that carries our provenance tag."""
        index: dict[str, list[Copy]] = {}
        for found in self._search(target_experiment_id):
            tags = _tags(found)
            source_id = tags.get(SOURCE_RUN_ID_TAG)
            if not source_id:
                continue
            info = found["info"]
            index.setdefault(source_id, []).append(
                Copy(
                    target_run_id=_run_id(info),
                    complete=tags.get(COMPLETE_TAG) == COMPLETE_VALUE,
                    lifecycle_stage=info.get("lifecycle_stage", "active"),
                )
            )
        return index

    def _search(self, target_experiment_id: str) -> Iterator[dict]:
        body = {
            "experiment_ids": [target_experiment_id],
            "filter": f"tags.`{SOURCE_RUN_ID_TAG}` != ''",
            "run_view_type": "ALL",
            "max_results": self._search_page,
        }
        for answer in self._client.pages("POST", f"{API}/runs/search", body):
            yield from answer.get("runs", [])

    def find(self, run: Run, target_experiment_id: str) -> str | None:
        """The target id of the complete copy of run, after deleting its partial copies
        (and deleting the complete one again if the source run is deleted and it is not)."""
        index = self._of(target_experiment_id)
        with self._lock:
            copies = list(index.get(run.run_id, ()))
        complete = next((c for c in copies if c.complete), None)
        partial = [c for c in copies if not c.complete]
        for copy in partial:
            if copy.lifecycle_stage != DELETED:
                # Left by an interrupted transfer: never let it pass for an ordinary run.
                self.delete_run(copy.target_run_id)
        if complete is not None and run.lifecycle_stage == DELETED and complete.lifecycle_stage != DELETED:
            # Restoring the experiment restored all its runs, or an interrupted transfer
            # stopped between the completion tag and the deletion: put back the deleted state.
            self.delete_run(complete.target_run_id)
            complete.lifecycle_stage = DELETED
        with self._lock:
            if complete is None:
                index.pop(run.run_id, None)
            else:
                index[run.run_id] = [complete]
        return complete.target_run_id if complete is not None else None

    def lookup(self, source_run_id: str, target_experiment_id: str) -> str | None:
        """The target id of the complete copy of the source run; nothing is changed."""
        index = self._of(target_experiment_id)
        with self._lock:
            complete = next((c for c in index.get(source_run_id, ()) if c.complete), None)
        return complete.target_run_id if complete is not None else None

    def written(self, target_experiment_id: str, source_run_id: str, target_run_id: str, lifecycle_stage: str) -> None:
        """A run this sink has just written whole."""
        with self._lock:
            index = self._indexes.peek(target_experiment_id)
            if index is not None:
                index[source_run_id] = [Copy(target_run_id, True, lifecycle_stage)]

    def delete_run(self, target_run_id: str) -> None:
        try:
            self._client.call("POST", f"{API}/runs/delete", body={"run_id": target_run_id})
        except NotFoundError:
            pass

    def delete_incomplete(self, target_experiment_id: str, source_run_id: str) -> None:
        """Delete the active runs of the experiment that name source_run_id and are not
        complete: what a runs/create whose answer was lost may have made."""
        for orphan in self._incomplete(target_experiment_id, source_run_id):
            self.delete_run(orphan)

    def _incomplete(self, target_experiment_id: str, source_run_id: str) -> list[str]:
        if _SIMPLE_ID.match(source_run_id):  # safe to quote in a filter
            body = {
                "experiment_ids": [target_experiment_id],
                "filter": f"tags.`{SOURCE_RUN_ID_TAG}` = '{source_run_id}'",
                "run_view_type": "ACTIVE_ONLY",
                "max_results": self._search_page,
            }
            found = self._client.call("POST", f"{API}/runs/search", body=body).get("runs", [])
        else:
            found = [r for r in self._search(target_experiment_id) if r.get("info", {}).get("lifecycle_stage") != DELETED]
        orphans = []
        for r in found:
            tags = _tags(r)
            if tags.get(SOURCE_RUN_ID_TAG) == source_run_id and tags.get(COMPLETE_TAG) != COMPLETE_VALUE:
                orphans.append(_run_id(r["info"]))
        return orphans
