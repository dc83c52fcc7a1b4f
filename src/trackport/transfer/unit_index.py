"""The units of one kind a store holds in one place, as verify looks up the copy of each
source unit among them: by the provenance tag naming its source (a copy under a new id),
by id, or by a name no other unit there has (transfer/compare_units.py).

Kept in a temporary sqlite file, not in memory: an experiment may hold a million traces,
each with its spans (about 10 KB for a small trace), and verify reads the source's units
one at a time against them. The units go in as JSON, so they come back as JSON gives them
(lists, not tuples): compare_units puts the source's side through JSON too (`through_json`).
"""
from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterable

from trackport.kinds import Unit
from trackport.provenance import SOURCE_UNIT_TAG

_BATCH = 500


class UnitIndex:
    def __init__(self, units: Iterable[object]) -> None:
        """units: a listing (Unreadable ones are left out: nothing can be compared with them)."""
        self._dir = tempfile.TemporaryDirectory(prefix="trackport-verify-")
        self._db = sqlite3.connect(Path(self._dir.name) / "units.db", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")  # a scratch file, thrown away after
        self._db.execute("CREATE TABLE units (id TEXT PRIMARY KEY, source TEXT, name TEXT, doc TEXT NOT NULL)")
        batch: list[tuple] = []
        for unit in units:
            if isinstance(unit, Unit):
                batch.append((unit.unit_id, _source_of(unit), unit.name, _dumps(unit)))
                if len(batch) >= _BATCH:
                    self._insert(batch)
        self._insert(batch)
        self._db.execute("CREATE INDEX by_source ON units (source)")
        self._db.execute("CREATE INDEX by_name ON units (name)")

    def _insert(self, batch: list[tuple]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO units VALUES (?, ?, ?, ?)", batch)  # a later one of an id wins
        batch.clear()

    def copy_of(self, unit: Unit) -> Unit | None:
        """The unit that names this one as its source, else the one of its id, else the only
        one of its name."""
        for query, arg in (("SELECT doc FROM units WHERE source = ? ORDER BY rowid DESC LIMIT 1", unit.unit_id),
                           ("SELECT doc FROM units WHERE id = ?", unit.unit_id)):
            row = self._db.execute(query, (arg,)).fetchone()
            if row is not None:
                return _loads(row[0])
        if unit.name:
            rows = self._db.execute("SELECT doc FROM units WHERE name = ? LIMIT 2", (unit.name,)).fetchall()
            if len(rows) == 1:
                return _loads(rows[0][0])
        return None

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> "UnitIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def through_json(unit: Unit) -> Unit:
    """The unit as the index gives units back (see the module docstring)."""
    return _loads(_dumps(unit))


def _source_of(unit: Unit) -> str | None:
    tags = unit.body.get("tags")
    return str(tags.get(SOURCE_UNIT_TAG)) if isinstance(tags, dict) and SOURCE_UNIT_TAG in tags else None


def _dumps(unit: Unit) -> str:
    return json.dumps([unit.kind, unit.unit_id, unit.experiment_id, unit.name, unit.refs, unit.body])


def _loads(text: str) -> Unit:
    kind, unit_id, experiment_id, name, refs, body = json.loads(text)
    return Unit(kind, unit_id, experiment_id, name, refs, body)
