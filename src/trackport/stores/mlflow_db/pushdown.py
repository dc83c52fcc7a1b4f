"""A filter's clauses as SQL conditions on MLflow's runs table, for a database source.

The database then returns a superset of the runs the filter takes, never fewer, and
trackport.search evaluates the whole filter on what it returns (trackport.selection.runs_of).
So only what SQL reads at least as widely as trackport is pushed: `=`, IN and LIKE on strings
(LIKE ignores ASCII case in sqlite and MySQL, which only widens it); `!=`, NOT IN and IS NULL
only where strings compare exactly (sqlite, PostgreSQL; MySQL's collations ignore case);
numeric comparisons of attributes, of latest values (NaN points, stored as 0 with is_nan,
left out) and of MIN()/MAX() over the history. ILIKE (SQL's lower() folds ASCII only), `!=`
on a metric and dataset clauses are left to the evaluator.
"""
from __future__ import annotations

from typing import Any

from trackport.search import parse
from trackport.search.parser import ATTRIBUTE, METRIC, NUMERIC_COMPARATORS, PARAM, TAG, Clause
from trackport.stores.base import Selection
from trackport.stores.mlflow_db.tables import Database

_COLUMNS = {"run_id": "run_uuid", "run_name": "name"}
_EXACT_STRINGS = ("sqlite", "postgresql")


def conditions(db: Database, selection: Selection) -> list[Any]:
    """SQL conditions on db.tables["runs"] implied by the selection's filter and time bounds."""
    runs = db.tables["runs"]
    found = []
    if selection.created_after is not None:
        found.append(runs.c.start_time >= selection.created_after)
    if selection.created_before is not None:
        found.append(runs.c.start_time <= selection.created_before)
    if selection.filter:
        found += [c for c in (_condition(db, clause) for clause in parse(selection.filter).clauses) if c is not None]
    return found


def _condition(db: Database, clause: Clause) -> Any:
    exact = db.engine.dialect.name in _EXACT_STRINGS
    op = clause.comparator
    if op in ("!=", "NOT IN", "IS NULL", "IS NOT NULL") and not exact:
        return None
    if clause.kind == ATTRIBUTE:
        if clause.key == "deleted_time" and not db.has_deleted_time:
            return None
        return _compare(db.tables["runs"].c[_COLUMNS.get(clause.key, clause.key)], clause)
    if clause.kind in (PARAM, TAG):
        return _key_value(db, "params" if clause.kind == PARAM else "tags", clause)
    if clause.kind == METRIC and op in NUMERIC_COMPARATORS and op != "!=":
        return _metric(db, clause)
    return None


def _compare(column: Any, clause: Clause) -> Any:
    op, value = clause.comparator, clause.value
    if op == "LIKE":
        return column.like(value)
    if op == "IN":
        return column.in_(list(value))  # type: ignore[arg-type]
    if op == "NOT IN":
        return ~column.in_(list(value)) & column.is_not(None)  # type: ignore[arg-type]
    if op == "ILIKE":
        return None
    return {"=": column.__eq__, "!=": column.__ne__, ">": column.__gt__, ">=": column.__ge__,
            "<": column.__lt__, "<=": column.__le__}[op](value)


def _key_value(db: Database, table_name: str, clause: Clause) -> Any:
    sa, runs, table = db.sa, db.tables["runs"], db.tables[table_name]
    held = sa.select(sa.literal(1)).select_from(table).where(table.c.run_uuid == runs.c.run_uuid, table.c.key == clause.key)
    if clause.comparator == "IS NULL":
        return ~sa.exists(held)
    if clause.comparator == "IS NOT NULL":
        return sa.exists(held)
    condition = _compare(table.c.value, clause)
    return None if condition is None else sa.exists(held.where(condition))


def _metric(db: Database, clause: Clause) -> Any:
    sa, runs = db.sa, db.tables["runs"]
    if clause.aggregate in ("MIN", "MAX"):
        m = db.tables["metrics"]
        pick = sa.func.min if clause.aggregate == "MIN" else sa.func.max
        # `key || ''` keeps the planner off the primary key (key, ...), which would scan every
        # point of the key in the store once per run; by (run_uuid, key, step) it reads the
        # run's own points.
        value = (
            sa.select(pick(m.c.value))
            .where(m.c.run_uuid == runs.c.run_uuid, m.c.key.concat("") == clause.key, m.c.is_nan == sa.false())
            .scalar_subquery()
        )
        return _compare(value, clause)
    lm = db.tables["latest_metrics"]
    held = sa.select(sa.literal(1)).select_from(lm).where(
        lm.c.run_uuid == runs.c.run_uuid, lm.c.key == clause.key, lm.c.is_nan == sa.false()
    )
    return sa.exists(held.where(_compare(lm.c.value, clause)))
