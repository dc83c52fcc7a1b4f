"""--bulk-load: a whole restore into a PostgreSQL database that holds no runs yet, in ONE
transaction, with the `metrics` table's keys and indexes dropped while its rows are loaded
and made again, from their own definitions, before the commit.

Why: each point a run's COPY writes into MLflow's `metrics` table checks its foreign key
(run_uuid -> runs) and goes into the primary key and two more B-tree indexes, row by row;
that, not trackport, bounds the per-run restore (docs/performance.md). Built once over the
loaded rows, the same indexes are sorted in bulk and the foreign key is checked by one join.

What it keeps exact: the definitions are read from PostgreSQL's catalog before they are
dropped (`pg_get_constraintdef`, `pg_get_indexdef`: MLflow's own DDL, whatever its
revision), and the same statements with the same names make them again. PostgreSQL's DDL is
transactional, so until the commit nothing is visible to any other session (the dropped
keys included: the ALTERs hold the tables' exclusive locks), and a killed or failed load
leaves the database as it was. What it trades: no run is committed before the last one, so
a killed load keeps nothing and its re-run starts from the beginning (the per-run mode
resumes). Refused for MySQL/MariaDB (DDL commits itself there) and for a database holding
runs (a failed re-check would then also undo what the database held).
"""
from __future__ import annotations

from dataclasses import dataclass

from trackport.errors import BadInputError
from trackport.stores.serverdb.connection import POSTGRES, Cursor, Target
from trackport.stores.sqlite.run_folders import RunFolders

TABLES = ("metrics",)  # the tables whose keys and indexes are made again after the load
# Sorting a million metric rows (about 100 MB of keys) in memory rather than in temporary files.
MAINTENANCE_WORK_MEM = "256MB"
NOTICE = ("--bulk-load: the whole restore is one transaction, committed after the last unit; a killed or failed"
          " load keeps nothing and starts again from the beginning")


@dataclass(frozen=True)
class Definition:
    table: str  # as regclass prints it (quoted and schema-qualified as needed)
    name: str  # quoted
    sql: str  # pg_get_constraintdef or pg_get_indexdef
    kind: str  # "p", "u", "f" (constraints) or "i" (an index no constraint owns)

    def drop(self) -> str:
        if self.kind == "i":
            return f"DROP INDEX {self.name}"
        return f"ALTER TABLE {self.table} DROP CONSTRAINT {self.name}"

    def create(self) -> str:
        if self.kind == "i":
            return self.sql
        return f"ALTER TABLE {self.table} ADD CONSTRAINT {self.name} {self.sql}"


def refuse_unless_possible(target: Target, holds_runs: bool) -> None:
    if target.backend != POSTGRES:
        raise BadInputError(
            f"--bulk-load writes into PostgreSQL only: {target.display} is MySQL/MariaDB, whose DDL commits itself;"
            " leave it out (the restore goes run by run)"
        )
    if holds_runs:
        raise BadInputError(
            f"--bulk-load needs a database that holds no runs, and {target.display} holds some: leave it out"
            " (the restore goes run by run), or restore into a new database `mlflow db upgrade` made"
        )


def definitions(cur: Cursor, tables: tuple[str, ...] = TABLES) -> list[Definition]:
    """The tables' primary, unique and foreign keys and the indexes no constraint owns, in
    the order they are made again: keys first, then the other indexes, then foreign keys
    (checked by one join once the rows are in). CHECK and NOT NULL constraints stay."""
    found: list[Definition] = []
    for table in tables:
        cur.execute(
            "SELECT c.conrelid::regclass::text, quote_ident(c.conname), pg_get_constraintdef(c.oid), c.contype"
            " FROM pg_constraint c WHERE c.conrelid = to_regclass(?) AND c.contype IN ('p', 'u', 'f')"
            " ORDER BY c.contype = 'f', c.conname",
            (table,),
        )
        found += [Definition(*row) for row in cur.fetchall()]
        cur.execute(
            "SELECT i.indrelid::regclass::text, quote_ident(n.nspname) || '.' || quote_ident(x.relname),"
            " pg_get_indexdef(i.indexrelid), 'i'"
            " FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_namespace n ON n.oid = x.relnamespace"
            " WHERE i.indrelid = to_regclass(?) AND NOT EXISTS"
            " (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)"
            " ORDER BY x.relname",
            (table,),
        )
        found += [Definition(*row) for row in cur.fetchall()]
    return sorted(found, key=lambda d: "puif".index(d.kind))


def drop(cur: Cursor, found: list[Definition]) -> None:
    """Inside the load's transaction: foreign keys and indexes first, then the keys."""
    for definition in sorted(found, key=lambda d: "fipu".index(d.kind)):
        cur.execute(definition.drop())


def remake(cur: Cursor, found: list[Definition]) -> None:
    """Inside the load's transaction, after the last unit: the same keys and indexes again
    (a duplicate key or a row without its run fails the statement, and so the load)."""
    cur.execute(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
    for definition in found:
        cur.execute(definition.create())


class DeferredFolders(RunFolders):
    """Run folders whose claims are dropped only after the load's commit: a killed load's
    folders are removed when the target is next opened (RunFolders.settle), as any
    uncommitted run's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pending: list[str] = []

    def committed(self, unit_id: str) -> None:
        self.pending.append(unit_id)

    def all_committed(self) -> None:
        for unit_id in self.pending:
            super().committed(unit_id)
        self.pending.clear()
