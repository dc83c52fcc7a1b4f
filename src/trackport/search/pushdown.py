"""What of a selection a store that searches runs with MLflow's own search (a tracking
server) may be asked to do itself, as one MLflow filter string.

Only clauses MLflow reads exactly as trackport.search.evaluate does are pushed: its result is
then a superset of the runs the whole selection takes, and the evaluator decides the rest.
Not pushed: MIN() and MAX() (no open-source server has them), `!=` on a metric (a SQL-backed
server keeps NaN as 0, so `metrics.x != 0` would leave out a run whose latest value is NaN),
IS NULL (older servers refuse it), deleted_time and lifecycle_stage (not searchable), and a
key or value that cannot be quoted for MLflow. LATEST(metrics.x) is metrics.x to MLflow.
"""
from __future__ import annotations

from trackport.search.parser import ATTRIBUTE, DATASET, METRIC, NULL_COMPARATORS, Clause, parse
from trackport.stores.base import Selection

_UNSEARCHABLE_ATTRIBUTES = ("deleted_time", "lifecycle_stage")


def mlflow_filter(selection: Selection) -> str | None:
    """The MLflow search filter for the parts of the selection's filter and creation-time
    bounds a server can apply; None when there are none."""
    parts = []
    if selection.filter:
        parts += [text for text in map(render, parse(selection.filter).clauses) if text is not None]
    if selection.created_after is not None:
        parts.append(f"attributes.start_time >= {selection.created_after}")
    if selection.created_before is not None:
        parts.append(f"attributes.start_time <= {selection.created_before}")
    return " AND ".join(parts) or None


def render(clause: Clause) -> str | None:
    """The clause in MLflow's syntax, or None when MLflow would not read it as trackport does."""
    if clause.aggregate in ("MIN", "MAX") or clause.comparator in NULL_COMPARATORS:
        return None
    if clause.kind == METRIC and clause.comparator == "!=":
        return None
    if clause.kind == ATTRIBUTE and clause.key in _UNSEARCHABLE_ATTRIBUTES:
        return None
    if "`" in clause.key:
        return None
    name = clause.key if clause.kind == ATTRIBUTE else f"`{clause.key}`"
    prefix = {DATASET: "datasets", ATTRIBUTE: "attributes"}.get(clause.kind, clause.kind + "s")
    if isinstance(clause.value, tuple):
        quoted = [_quote(v) for v in clause.value]
        if None in quoted:
            return None
        value = "(" + ", ".join(quoted) + ")"  # type: ignore[arg-type]
    elif isinstance(clause.value, str):
        value = _quote(clause.value)
        if value is None:
            return None
    else:
        value = repr(clause.value) if isinstance(clause.value, float) else str(clause.value)
        if not value.lstrip("-").replace(".", "").isdigit():
            return None  # 1e+308, inf: not every server reads an exponent back
    return f"{prefix}.{name} {clause.comparator} {value}"


def _quote(text: str) -> str | None:
    """A string literal MLflow reads back as text: it strips the quotes and knows no escapes."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return None
