"""The MLflow tracking domain as trackport moves it: plain, typed, immutable values.

Every store reads into and writes from these types, so no store depends on another
store's representation. Metric histories never live here as Python objects: they travel
as Arrow record batches (see METRIC_SCHEMA) because runs can hold millions of points.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NewType

import pyarrow as pa
import pyarrow.compute as pc

# Ids as the source store knows them, and as the sink assigned them. Keeping the two
# apart in the type system stops a remapping bug from passing a source id to a sink.
SourceExperimentId = NewType("SourceExperimentId", str)
TargetExperimentId = NewType("TargetExperimentId", str)
SourceRunId = NewType("SourceRunId", str)
TargetRunId = NewType("TargetRunId", str)

# MLflow's rules for the keys and values of a run's params, tags and metrics (its
# utils/validation.py, as a server on Linux applies them).
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
_VALID_KEY = re.compile(r"^[/\w.\- :]*$")


def key_problem(key: str) -> str | None:
    """Why MLflow's server would refuse a param, tag or metric key; None when it takes it."""
    if not key:
        return "a key cannot be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"it is longer than {MAX_KEY_LENGTH} characters"
    if not _VALID_KEY.match(key):
        return "it may only hold letters, digits, spaces and _ - . : /"
    normal = posixpath.normpath(key)
    if normal != key or normal == "." or normal.startswith(("..", "/")):
        return f"it would resolve to another name as a path ({normal!r})"
    return None


ACTIVE = "active"
DELETED = "deleted"

PARENT_RUN_ID_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"

# One metric point per row; a run's history is a stream of batches of this shape.
METRIC_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)


def rebatch(parts: Iterable[pa.Table | pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of parts (tables or batches, read in whatever pieces), in order, as batches
    of up to `rows` rows: sources yield their histories in one shape, so the bundles they
    write are alike."""
    pending: list[pa.Table] = []
    pending_rows = 0
    for part in parts:
        if not part.num_rows:
            continue
        pending.append(part if isinstance(part, pa.Table) else pa.Table.from_batches([part]))
        pending_rows += part.num_rows
        if pending_rows >= rows:
            yield from pa.concat_tables(pending).combine_chunks().to_batches(max_chunksize=rows)
            pending, pending_rows = [], 0
    if pending:
        yield from pa.concat_tables(pending).combine_chunks().to_batches(max_chunksize=rows)


@dataclass(frozen=True)
class MetricSummary:
    """One metric of one run: its latest point (MLflow's rule: the greatest (step, timestamp,
    value)) and, when its whole history was read, the least and greatest value with NaN points
    left out (None when every point is NaN, as SQL's MIN and MAX ignore NULL) and the number
    of points (None when only the latest point was read)."""

    latest: float
    step: int
    timestamp: int
    min: float | None = None
    max: float | None = None
    points: int | None = None


def summarize(batches: Iterable[pa.RecordBatch], keys: frozenset[str] | None = None) -> dict[str, MetricSummary]:
    """The summaries of the metrics named by keys (all when None) from a run's history in
    the order sources give it (sorted by key, step, timestamp, value: the last point of a key
    is its latest), one batch at a time."""
    found: dict[str, MetricSummary] = {}
    for batch in batches:
        table = pa.Table.from_batches([batch])
        if keys is not None:
            table = table.filter(pc.is_in(table.column("key"), pa.array(sorted(keys), pa.string())))
        if not table.num_rows:
            continue
        values = table.column("value")
        table = table.append_column("number", pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values))
        grouped = table.group_by("key", use_threads=False).aggregate(
            [("number", "min"), ("number", "max"), ("value", "count"), ("step", "last"), ("timestamp", "last"), ("value", "last")]
        )
        for row in grouped.to_pylist():
            key, before = row["key"], found.get(row["key"])
            low, high = row["number_min"], row["number_max"]
            if before is not None:
                low = _least(before.min, low, min)
                high = _least(before.max, high, max)
            points = row["value_count"] + (before.points if before else 0)
            found[key] = MetricSummary(row["value_last"], row["step_last"], row["timestamp_last"], low, high, points)
    return found


def _least(a: float | None, b: float | None, pick) -> float | None:
    return b if a is None else a if b is None else pick(a, b)


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str
    lifecycle_stage: str = ACTIVE
    artifact_location: str | None = None
    creation_time: int | None = None
    last_update_time: int | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInput:
    """A dataset logged as a run input (MLflow's log-inputs), with the input's tags."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str | None = None
    profile: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    run_id: str
    experiment_id: str
    run_name: str
    user_id: str
    status: str
    start_time: int | None
    end_time: int | None
    lifecycle_stage: str = ACTIVE
    deleted_time: int | None = None
    artifact_uri: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    inputs: tuple[DatasetInput, ...] = ()

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get(PARENT_RUN_ID_TAG)


@dataclass(frozen=True)
class ArtifactFile:
    """One artifact file of a run; path is relative to the run's artifact root, '/'-separated."""

    path: str
    size: int


@dataclass(frozen=True)
class Capabilities:
    """What a sink can hold exactly. The engine plans against this before writing."""

    keeps_run_ids: bool
    keeps_experiment_ids: bool
    keeps_times: bool
    keeps_users: bool
    keeps_deleted_state: bool
    keeps_infinity: bool
    keeps_deleted_time: bool = True
    keeps_experiment_times: bool = True
    # A run that fails half-way leaves nothing behind (rolled back, its files removed). A
    # server cannot take a run back (deleting is only a mark), so the source is asked to
    # check the run's content before anything of it is written there.
    undoes_failed_runs: bool = True
    max_param_value_length: int | None = None
    max_tag_value_length: int | None = None
    # Logged model ids (a server makes new ones) and the times of logged models, registered
    # models and versions and the users of versions (a server sets them when writing).
    keeps_model_ids: bool = True
    keeps_registry_times: bool = True

    @classmethod
    def lossless(cls) -> "Capabilities":
        """A sink that holds everything exactly (a bundle, a local store)."""
        return cls(
            keeps_run_ids=True,
            keeps_experiment_ids=True,
            keeps_times=True,
            keeps_users=True,
            keeps_deleted_state=True,
            keeps_infinity=True,
        )
