"""The persisted map from source ids to the ids the sink assigned, for units of any kind."""
from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
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
    what a reference names is looked up in the target (SinkStore.lookup_run).

    While a transfer runs the ids are also kept in a temporary sqlite file (not in memory: a
    million traces), to skip a line the file holds already and to sort the file at the end.
    Units finish on worker threads: one lock."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / IDMAP_FILE
        self._lock = threading.Lock()
        self._scratch = tempfile.TemporaryDirectory(prefix="trackport-idmap-")
        self._db = sqlite3.connect(Path(self._scratch.name) / "ids.db", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")  # a scratch file, thrown away at close
        self._db.execute("CREATE TABLE ids (kind TEXT, source_id TEXT, target_id TEXT, PRIMARY KEY (kind, source_id))")
        self._db.executemany("INSERT OR REPLACE INTO ids VALUES (?, ?, ?)",
                             ((e["kind"], e["source_id"], e["target_id"]) for e in read_jsonl(self.path)))
        self._appender = JsonlAppender(self.path)

    def _get(self, kind: str, source_id: str) -> str | None:
        row = self._db.execute("SELECT target_id FROM ids WHERE kind = ? AND source_id = ?", (kind, source_id)).fetchone()
        return None if row is None else row[0]

    def get(self, kind: str, source_id: str) -> str | None:
        with self._lock:
            return self._get(kind, source_id)

    def source_ids(self, kind: str) -> list[str]:
        with self._lock:
            return [i for (i,) in self._db.execute("SELECT source_id FROM ids WHERE kind = ? ORDER BY source_id", (kind,))]

    def add(self, kind: str, source_id: str, target_id: str) -> None:
        with self._lock:
            if self._get(kind, source_id) != target_id:
                self._db.execute("INSERT OR REPLACE INTO ids VALUES (?, ?, ?)", (kind, source_id, target_id))
                self._appender.append({"kind": kind, "source_id": source_id, "target_id": target_id})

    def compact(self) -> None:
        """Rewrite the file sorted (by kind, then source id), so the same transfer always
        leaves the same file whatever order its workers finished in."""
        self._appender.close()
        temp = self.path.with_name(self.path.name + ".tmp")
        try:
            with self._lock, temp.open("w", encoding="utf-8") as f:
                found = [k for (k,) in self._db.execute("SELECT DISTINCT kind FROM ids")]
                for kind in sorted(found, key=kind_order):
                    # sqlite orders TEXT by its UTF-8 bytes: code point order, as sorted() does
                    rows = self._db.execute("SELECT source_id, target_id FROM ids WHERE kind = ? ORDER BY source_id", (kind,))
                    for source_id, target_id in rows:
                        entry = {"kind": kind, "source_id": source_id, "target_id": target_id}
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
        self._db.close()
        self._scratch.cleanup()
