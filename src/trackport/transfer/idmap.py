"""The persisted map from source ids to the ids the sink assigned."""
from __future__ import annotations

import json
import os
from pathlib import Path

from trackport.domain import SourceExperimentId, SourceRunId, TargetExperimentId, TargetRunId
from trackport.errors import storage_error
from trackport.transfer.jsonl import JsonlAppender, read_jsonl

IDMAP_FILE = "idmap.jsonl"


class IdMap:
    """Source → target ids for experiments and runs, appended to <state dir>/idmap.jsonl as
    each unit completes: a record for people (`trackport idmap`). Nothing written depends
    on it: what a reference names is looked up in the target (SinkStore.lookup_run)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / IDMAP_FILE
        self._experiments: dict[SourceExperimentId, TargetExperimentId] = {}
        self._runs: dict[SourceRunId, TargetRunId] = {}
        for entry in read_jsonl(self.path):
            table = self._experiments if entry["kind"] == "experiment" else self._runs
            table[entry["source_id"]] = entry["target_id"]
        self._appender = JsonlAppender(self.path)

    def experiment(self, source_id: SourceExperimentId) -> TargetExperimentId | None:
        return self._experiments.get(source_id)

    def run(self, source_id: SourceRunId) -> TargetRunId | None:
        return self._runs.get(source_id)

    def add_experiment(self, source_id: SourceExperimentId, target_id: TargetExperimentId) -> None:
        if self._experiments.get(source_id) != target_id:
            self._experiments[source_id] = target_id
            self._appender.append({"kind": "experiment", "source_id": source_id, "target_id": target_id})

    def add_run(self, source_id: SourceRunId, target_id: TargetRunId) -> None:
        if self._runs.get(source_id) != target_id:
            self._runs[source_id] = target_id
            self._appender.append({"kind": "run", "source_id": source_id, "target_id": target_id})

    def compact(self) -> None:
        """Rewrite the file sorted (experiments, then runs, by source id), so the same
        transfer always leaves the same file whatever order its workers finished in."""
        self._appender.close()
        temp = self.path.with_name(self.path.name + ".tmp")
        try:
            with temp.open("w", encoding="utf-8") as f:
                for kind, table in (("experiment", self._experiments), ("run", self._runs)):
                    for source_id in sorted(table):
                        entry = {"kind": kind, "source_id": source_id, "target_id": table[source_id]}
                        f.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise (storage_error(exc, str(self.path)) or exc) from None
        self._appender = JsonlAppender(self.path)

    def close(self) -> None:
        self._appender.close()
