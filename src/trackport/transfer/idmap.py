"""The persisted map from source ids to the ids the sink assigned, for units of any kind."""
from __future__ import annotations

import json
import os
from pathlib import Path

from trackport.errors import storage_error
from trackport.kinds import names
from trackport.transfer.jsonl import JsonlAppender, read_jsonl

IDMAP_FILE = "idmap.jsonl"


def kind_order(kind: str) -> tuple:
    """Experiments, runs, then the other kinds in the order they are registered (kinds a
    unit depends on first), then kinds no longer registered by name: the order files list them in."""
    known = names()
    return (known.index(kind), "") if kind in known else (len(known), kind)


class IdMap:
    """Source → target ids per unit kind, appended to <state dir>/idmap.jsonl as each unit
    completes: a record for people (`trackport idmap`). Nothing written depends on it:
    what a reference names is looked up in the target (SinkStore.lookup_run)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / IDMAP_FILE
        self._ids: dict[str, dict[str, str]] = {}
        for entry in read_jsonl(self.path):
            self._ids.setdefault(entry["kind"], {})[entry["source_id"]] = entry["target_id"]
        self._appender = JsonlAppender(self.path)

    def get(self, kind: str, source_id: str) -> str | None:
        return self._ids.get(kind, {}).get(source_id)

    def source_ids(self, kind: str) -> list[str]:
        return sorted(self._ids.get(kind, {}))

    def add(self, kind: str, source_id: str, target_id: str) -> None:
        table = self._ids.setdefault(kind, {})
        if table.get(source_id) != target_id:
            table[source_id] = target_id
            self._appender.append({"kind": kind, "source_id": source_id, "target_id": target_id})

    def compact(self) -> None:
        """Rewrite the file sorted (by kind, then source id), so the same transfer always
        leaves the same file whatever order its workers finished in."""
        self._appender.close()
        temp = self.path.with_name(self.path.name + ".tmp")
        try:
            with temp.open("w", encoding="utf-8") as f:
                for kind in sorted(self._ids, key=kind_order):
                    table = self._ids[kind]
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
