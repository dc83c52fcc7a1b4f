"""MLflow's core tables as lightweight SQLAlchemy constructs (no ORM, no MLflow models),
and what the schema of one database has."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from trackport.errors import BadInputError

IN_CHUNK = 500  # ids per IN (...) clause, well under every dialect's bound-parameter limit
MISSING_SQLALCHEMY = (
    "reading an MLflow database directly needs SQLAlchemy: pip install 'trackport[db]' "
    "(or 'trackport[local]')"
)
REQUIRED_TABLES = {"experiments", "runs", "metrics", "alembic_version"}


def import_sqlalchemy() -> Any:
    """The sqlalchemy module, imported on first use (it takes a third of a second)."""
    try:
        import sqlalchemy
    except ImportError as exc:
        raise BadInputError(MISSING_SQLALCHEMY) from exc
    return sqlalchemy


def chunks(items: list, size: int = IN_CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _tables(sa: Any) -> dict[str, Any]:
    t = lambda name, *cols: sa.table(name, *(sa.column(c) for c in cols))  # noqa: E731
    return {
        "experiments": t(
            "experiments", "experiment_id", "name", "artifact_location", "lifecycle_stage",
            "creation_time", "last_update_time",
        ),
        "experiment_tags": t("experiment_tags", "experiment_id", "key", "value"),
        "runs": t(
            "runs", "run_uuid", "name", "user_id", "status", "start_time", "end_time",
            "lifecycle_stage", "artifact_uri", "experiment_id", "deleted_time",
        ),
        "params": t("params", "run_uuid", "key", "value"),
        "tags": t("tags", "run_uuid", "key", "value"),
        "metrics": t("metrics", "run_uuid", "key", "step", "timestamp", "value", "is_nan"),
        "latest_metrics": t("latest_metrics", "run_uuid", "key", "step", "timestamp", "value", "is_nan"),
        "datasets": t(
            "datasets", "dataset_uuid", "experiment_id", "name", "digest", "dataset_source_type",
            "dataset_source", "dataset_schema", "dataset_profile",
        ),
        "inputs": t("inputs", "input_uuid", "source_type", "source_id", "destination_type", "destination_id"),
        "input_tags": t("input_tags", "input_uuid", "name", "value"),
    }


@dataclass(frozen=True)
class Database:
    sa: Any  # the sqlalchemy module
    engine: Any
    tables: dict[str, Any]
    has_inputs: bool
    has_deleted_time: bool

    @classmethod
    def inspect(cls, engine: Any, uri: str) -> Database:
        sa = import_sqlalchemy()
        names = set(sa.inspect(engine).get_table_names())
        missing = REQUIRED_TABLES - names
        if missing:
            raise BadInputError(f"{uri} is not an MLflow tracking database (no {', '.join(sorted(missing))} table)")
        run_columns = {c["name"] for c in sa.inspect(engine).get_columns("runs")}
        return cls(sa, engine, _tables(sa), {"datasets", "inputs", "input_tags"} <= names, "deleted_time" in run_columns)
