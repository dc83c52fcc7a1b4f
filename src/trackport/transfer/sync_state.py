"""What the last sync from a source into a target left: per source run, the target run that
holds it and both runs' fingerprints as they were when the sync finished with it; per
source experiment, the target experiment and the name it was given.

JSON Lines in the target's state directory (sync.jsonl, beside the id map), one record
per line, the latest line of a unit deciding; entries of every source that synced into
the target, told apart by the source's identity. A run's "pending" line is written (and
flushed) before the sync changes the target run, so that a sync killed half-way does not
take its own half-done change for an edit made on the target.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from trackport.errors import storage_error
from trackport.fingerprint import Fingerprint
from trackport.transfer.jsonl import JsonlAppender, read_jsonl

SYNC_FILE = "sync.jsonl"


@dataclass(frozen=True)
class RunRecord:
    source_run_id: str
    source_experiment_id: str
    target_run_id: str
    source: Fingerprint  # the source run's fingerprint when it was last synced
    target: Fingerprint  # the target run's, read back after that sync wrote it
    name: str = ""
    pending: bool = False  # a change to the target run was begun and not finished


@dataclass(frozen=True)
class ExperimentRecord:
    source_experiment_id: str
    target_experiment_id: str
    name: str  # the name the target experiment was given


class SyncState:
    """The records of syncs from one source (by its identity) into the target whose state
    directory holds them. Safe for the engine's workers to share."""

    def __init__(self, state_dir: Path, source_key: str) -> None:
        self.path = state_dir / SYNC_FILE
        self.source_key = source_key
        self._others: list[dict] = []  # lines of other sources, kept as they are
        self.runs: dict[str, RunRecord] = {}
        self.experiments: dict[str, ExperimentRecord] = {}
        for line in read_jsonl(self.path):
            if line.get("source_key") != source_key:
                self._others.append(line)
            elif line.get("unit") == "forget":
                self.runs.pop(line["source_run_id"], None)
            elif line.get("unit") == "experiment":
                self.experiments[line["source_experiment_id"]] = ExperimentRecord(
                    line["source_experiment_id"], line["target_experiment_id"], line["name"]
                )
            else:
                self.runs[line["source_run_id"]] = RunRecord(
                    line["source_run_id"], line["source_experiment_id"], line["target_run_id"],
                    line["source"], line["target"], line.get("name", ""), line.get("pending", False),
                )
        self._lock = threading.Lock()
        self._appender: JsonlAppender | None = None

    def _append(self, line: dict) -> None:
        with self._lock:
            if self._appender is None:
                self._appender = JsonlAppender(self.path)
        self._appender.append({"source_key": self.source_key, **line})

    def run(self, source_run_id: str) -> RunRecord | None:
        with self._lock:
            return self.runs.get(source_run_id)

    def record_run(self, record: RunRecord) -> None:
        with self._lock:
            self.runs[record.source_run_id] = record
        self._append({"unit": "run", **vars(record)})

    def forget(self, source_run_id: str) -> None:
        """The run is gone from the source and its copy was dealt with: no longer synced."""
        with self._lock:
            self.runs.pop(source_run_id, None)
        self._append({"unit": "forget", "source_run_id": source_run_id})

    def begin_change(self, record: RunRecord) -> None:
        """Say (durably) that the target run is about to be changed."""
        self.record_run(RunRecord(**{**vars(record), "pending": True}))
        self._appender.sync()

    def record_experiment(self, record: ExperimentRecord) -> None:
        with self._lock:
            if self.experiments.get(record.source_experiment_id) == record:
                return
            self.experiments[record.source_experiment_id] = record
        self._append({"unit": "experiment", **vars(record)})

    def compact(self) -> None:
        """Rewrite the file with one line per unit, sorted, so that it does not grow with
        every sync."""
        self.close()
        lines = list(self._others)
        lines += [{"source_key": self.source_key, "unit": "experiment", **vars(r)} for _, r in sorted(self.experiments.items())]
        lines += [{"source_key": self.source_key, "unit": "run", **vars(r)} for _, r in sorted(self.runs.items())]
        temp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with temp.open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n" for line in lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise (storage_error(exc, str(self.path)) or exc) from None

    def close(self) -> None:
        with self._lock:
            if self._appender is not None:
                self._appender.close()
                self._appender = None
