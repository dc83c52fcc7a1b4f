"""Group commit for one sqlite database: many threads write units (a run each), one
connection commits them together.

A commit costs journal writes and fsyncs that, for a run of 10,000 metric points, take
longer than inserting the points. So a unit is written inside a SAVEPOINT of a shared
transaction; the transaction commits when no other writer is waiting, or when it holds
enough. `write()` returns only once its unit is committed: a unit the caller was told is
written is durable, and a crash loses only units nobody was told about. A unit that fails
is rolled back to its savepoint alone; a commit that fails fails every unit it held.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Callable, TypeVar

BUSY_TIMEOUT_S = 120.0
T = TypeVar("T")


class CommitError(Exception):
    """The transaction holding a unit could not be committed."""


class GroupCommitWriter:
    def __init__(
        self,
        path: Path,
        *,
        max_units: int = 32,
        max_rows: int = 400_000,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        synchronous_off: bool = False,
    ) -> None:
        # isolation_level=None: the transaction is ours (BEGIN/SAVEPOINT/COMMIT below).
        self._con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        if synchronous_off:  # for the caller's database alone: see sqlite.store
            self._con.execute("PRAGMA synchronous = OFF")
        self._max_units = max_units
        self._max_rows = max_rows
        self._lock = threading.Lock()  # held while writing or committing
        self._state = threading.Condition()  # guards the counters below
        self._waiting = 0  # threads queued for the lock
        self._open = False
        self._units = 0  # units in the open transaction
        self._rows = 0
        self._generation = 0  # number of the open (or next) transaction
        self._ended = 0  # transactions 0 .. _ended - 1 are over
        self._failed: dict[int, tuple[str, BaseException]] = {}  # generation -> why it did not commit

    def write(self, unit: Callable[[sqlite3.Cursor], T]) -> T:
        """Run unit(cursor) in its own savepoint; return what it returns once the
        transaction holding it is committed."""
        with self._state:
            self._waiting += 1
        with self._lock:
            with self._state:
                self._waiting -= 1
            if not self._open:
                self._con.execute("BEGIN IMMEDIATE")
                self._open = True
            generation = self._generation
            cursor = self._con.cursor()
            cursor.execute("SAVEPOINT unit")
            changes_before = self._con.total_changes
            try:
                result = unit(cursor)
                cursor.execute("RELEASE unit")
                self._units += 1
                self._rows += self._con.total_changes - changes_before
                failure: BaseException | None = None
            except BaseException as exc:
                failure = exc
                self._roll_back_unit(cursor, exc)
            finally:
                cursor.close()
            if self._open:
                with self._state:
                    nobody_waiting = self._waiting == 0
                if nobody_waiting or self._units >= self._max_units or self._rows >= self._max_rows:
                    self._commit()
        if failure is not None:
            raise failure
        with self._state:
            while self._ended <= generation:
                self._state.wait()
            why = self._failed.get(generation)
        if why is not None:
            raise CommitError(why[0]) from why[1]
        return result

    def _roll_back_unit(self, cursor: sqlite3.Cursor, exc: BaseException) -> None:
        """Undo a failed unit alone. On some errors (a full disk, an I/O error) sqlite has
        already rolled back the whole transaction: then every unit it held is lost, and
        each of their writers is told so."""
        try:
            if self._con.in_transaction:
                cursor.execute("ROLLBACK TO unit")
                cursor.execute("RELEASE unit")
                return
        except sqlite3.Error:
            pass
        self._end(("the transaction holding this run was rolled back by the database", exc), roll_back=True)

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._commit()
            self._con.close()

    def _commit(self) -> None:
        try:
            self._con.execute("COMMIT")
        except sqlite3.Error as exc:
            self._end((f"committing to the database failed: {exc}", exc), roll_back=True)
        else:
            self._end(None)

    def _end(self, failed: tuple[str, BaseException] | None, *, roll_back: bool = False) -> None:
        """Close the open transaction's generation: its units' writers are released,
        with `failed` (why, cause) when it did not commit."""
        if roll_back:
            try:
                self._con.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # sqlite rolled back already: there is no transaction left
        with self._state:
            if failed is not None and self._units:
                self._failed[self._generation] = failed
            self._open = False
            self._units = self._rows = 0
            self._generation += 1
            self._ended = self._generation
            self._state.notify_all()
