"""MLflow's core tables as lightweight SQLAlchemy constructs (no ORM, no MLflow models),
and what the schema of one database has."""
from __future__ import annotations

from dataclasses import dataclass, field
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


def database_url(uri: str) -> Any:
    """SQLAlchemy's URL of a database URI; BadInputError (without the password) if it is none."""
    sa = import_sqlalchemy()
    try:
        return sa.engine.make_url(uri)
    except sa.exc.ArgumentError:
        raise BadInputError(f"{uri.split('@')[-1]}: not a database URL (dialect+driver://user:password@host:port/database)") from None


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
        "inputs": t("inputs", "input_uuid", "source_type", "source_id", "destination_type", "destination_id", "step"),
        "input_tags": t("input_tags", "input_uuid", "name", "value"),
        # MLflow 3's logged models and the model registry (absent from older schemas).
        "logged_models": t(
            "logged_models", "model_id", "experiment_id", "name", "artifact_location", "creation_timestamp_ms",
            "last_updated_timestamp_ms", "status", "lifecycle_stage", "model_type", "source_run_id", "status_message",
        ),
        "logged_model_params": t("logged_model_params", "model_id", "experiment_id", "param_key", "param_value"),
        "logged_model_tags": t("logged_model_tags", "model_id", "experiment_id", "tag_key", "tag_value"),
        "logged_model_metrics": t(
            "logged_model_metrics", "model_id", "experiment_id", "metric_name", "metric_timestamp_ms", "metric_step",
            "metric_value", "run_id", "dataset_uuid", "dataset_name", "dataset_digest",
        ),
        "registered_models": t(
            "registered_models", "name", "creation_time", "last_updated_time", "description", "workspace",
        ),
        "registered_model_tags": t("registered_model_tags", "name", "key", "value", "workspace"),
        "model_versions": t(
            "model_versions", "name", "version", "creation_time", "last_updated_time", "description", "user_id",
            "current_stage", "source", "run_id", "status", "status_message", "run_link", "storage_location",
            "workspace",
        ),
        "model_version_tags": t("model_version_tags", "name", "version", "key", "value", "workspace"),
        "registered_model_aliases": t("registered_model_aliases", "name", "alias", "version", "workspace"),
        # MLflow 3's traces (trace_info's columns after client_request_id came in later releases).
        "trace_info": t(
            "trace_info", "request_id", "experiment_id", "timestamp_ms", "execution_time_ms", "status",
            "client_request_id", "request_preview", "response_preview", "trace_name", "session_id", "input_tokens",
            "output_tokens", "total_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
            "cache_creation_input_tokens_above_1hr", "input_cost", "output_cost", "total_cost",
        ),
        "trace_tags": t("trace_tags", "request_id", "key", "value"),
        "trace_request_metadata": t("trace_request_metadata", "request_id", "key", "value"),
        "assessments": t(
            "assessments", "assessment_id", "trace_id", "name", "assessment_type", "value", "error",
            "created_timestamp", "last_updated_timestamp", "source_type", "source_id", "run_id", "span_id",
            "rationale", "overrides", "valid", "assessment_metadata",
        ),
        "spans": t("spans", "trace_id", "span_id", "content"),
    }


LOGGED_MODEL_TABLES = frozenset({"logged_models", "logged_model_params", "logged_model_tags", "logged_model_metrics"})
REGISTRY_TABLES = frozenset({"registered_models", "registered_model_tags", "model_versions", "model_version_tags"})
# The tables whose columns changed across MLflow versions (a column added later, such as
# `workspace` or `inputs.step`): their columns are read once, so queries name only those.
_VARYING_COLUMNS = ("inputs", "logged_models", "registered_models", "registered_model_tags", "model_versions",
                    "model_version_tags", "registered_model_aliases", "trace_info", "assessments")
TRACE_TABLES = frozenset({"trace_info", "trace_tags", "trace_request_metadata"})


@dataclass(frozen=True)
class Database:
    sa: Any  # the sqlalchemy module
    engine: Any
    tables: dict[str, Any]
    has_inputs: bool
    has_deleted_time: bool
    # The columns of the tables in _VARYING_COLUMNS this database has (none: no such table).
    columns: dict[str, frozenset[str]] = field(default_factory=dict)
    table_names: frozenset[str] = frozenset()

    def has(self, table: str, column: str | None = None) -> bool:
        """Whether the schema has the table (of the ones whose columns are read), and the column."""
        names = self.columns.get(table, frozenset())
        return bool(names) and (column is None or column in names)

    @property
    def has_logged_models(self) -> bool:
        return LOGGED_MODEL_TABLES <= self.table_names

    @property
    def has_traces(self) -> bool:
        return TRACE_TABLES <= self.table_names

    @property
    def has_registry(self) -> bool:
        return REGISTRY_TABLES <= self.table_names

    @classmethod
    def inspect(cls, engine: Any, uri: str) -> Database:
        sa = import_sqlalchemy()
        inspector = sa.inspect(engine)
        names = set(inspector.get_table_names())
        missing = REQUIRED_TABLES - names
        if missing:
            raise BadInputError(f"{uri} is not an MLflow tracking database (no {', '.join(sorted(missing))} table)")
        run_columns = {c["name"] for c in inspector.get_columns("runs")}
        columns = {t: frozenset(c["name"] for c in inspector.get_columns(t)) for t in _VARYING_COLUMNS if t in names}
        return cls(
            sa, engine, _tables(sa), {"datasets", "inputs", "input_tags"} <= names, "deleted_time" in run_columns,
            columns, frozenset(names),
        )
