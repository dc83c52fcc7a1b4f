"""The store interface: what the transfer engine asks of every source and sink.

A source reads experiments, runs, metric histories and artifacts. A sink writes them and
declares its Capabilities. A store may be both (the bundle, the local sqlite store).
Implementations never print and never swallow errors: they raise trackport.errors types.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ContextManager, Iterator, Protocol

import pyarrow as pa

from trackport.domain import (
    ArtifactFile,
    Capabilities,
    Experiment,
    MetricSummary,
    Run,
    SourceRunId,
    TargetExperimentId,
    TargetRunId,
    summarize,
)
from trackport.kinds import UnitKind


@dataclass(frozen=True)
class Selection:
    """Which experiments and runs a transfer takes. Empty tuples mean "all"."""

    experiments: tuple[str, ...] = ()  # names or ids
    run_ids: tuple[str, ...] = ()
    include_deleted: bool = False
    filter: str | None = None  # MLflow search syntax, e.g. "metrics.r2 > 0.3"
    # Registered models and prompts by name (`*` and `?` wildcards); empty: all of them when
    # nothing above narrows the selection, none otherwise (trackport.selection.takes_registry).
    models: tuple[str, ...] = ()
    models_only: bool = False  # the registry alone, without the runs and logged models behind it
    # run_ids are the runs behind the selected models (trackport.transfer.plan): one the
    # source no longer holds is the loss of its version, not a bad selection.
    runs_from_models: bool = False
    # Runs by creation (start) time, epoch milliseconds, both bounds inclusive.
    created_after: int | None = None
    created_before: int | None = None
    # Deleted runs only (`--status deleted`; include_deleted is then true as well).
    deleted_only: bool = False
    # Runs started or changed at or after this time, epoch milliseconds (`--since`): start,
    # end or deleted time, or any metric's latest point, at or after it (MLflow keeps no
    # last-update time of a run; trackport.selection.changed_since).
    changed_since: int | None = None
    # Kinds of units it leaves where they are (`--no-traces`: ("trace",)): not listed, not
    # moved, not compared.
    leave_kinds: tuple[str, ...] = ()
    # Traces (`--trace-filter`): MLflow's trace search filter, applied by a tracking server's
    # v3 search; (`--traces-since`) traces requested at or after this time, epoch ms. The
    # traces left out are counted as not selected (NotSelected in the listing).
    trace_filter: str | None = None
    traces_since: int | None = None

    def to_json(self) -> dict:
        return {
            "experiments": list(self.experiments),
            "run_ids": list(self.run_ids),
            "include_deleted": self.include_deleted,
            "filter": self.filter,
            "models": list(self.models),
            "models_only": self.models_only,
            "created_after": self.created_after,
            "created_before": self.created_before,
            "deleted_only": self.deleted_only,
            "changed_since": self.changed_since,
            "leave_kinds": list(self.leave_kinds),
            "trace_filter": self.trace_filter,
            "traces_since": self.traces_since,
        }

    @property
    def filters_runs(self) -> bool:
        """Whether it takes runs by what they hold (a filter, deleted state, creation or
        change time): trackport.selection.runs_of decides, not a listing by id."""
        times = (self.created_after, self.created_before, self.changed_since)
        return bool(self.filter or self.deleted_only or any(t is not None for t in times))

    @property
    def narrows_runs(self) -> bool:
        """Whether it takes some runs of the experiments it takes, not all of them."""
        return bool(self.run_ids) or self.filters_runs


@dataclass(frozen=True)
class SourceFeatures:
    """What a source is known to change (beside a sink's Capabilities). Every source takes
    every selection: what its iter_runs does not push down, trackport.selection.runs_of applies."""

    clamps_infinity: bool = False  # it holds ±inf as ±1.7976931348623157e308 (SQL-backed servers)


@dataclass(frozen=True)
class StoreDescription:
    """How a store describes itself in bundles, ledgers and messages: never with secrets."""

    kind: str  # "sqlite", "mlruns", "bundle", "rest", ...
    uri: str
    mlflow_version: str | None = None
    # Which store instance this is, so that a store replaced at the same place (a database
    # made again, a server reset) is told apart from the one earlier transfers wrote; and
    # one store reached under two names is not taken for two. None where unknown, or where
    # the records live inside the store itself (a bundle).
    identity: str | None = None


@dataclass(frozen=True)
class Unreadable:
    """An experiment or run the source found but cannot read (e.g. a damaged document in a
    bundle). Sources yield it in place of the unit so the engine counts it as failed, by
    name, and goes on with the others."""

    kind: str  # "experiment" | "run"
    source_id: str
    reason: str
    name: str = ""  # where the source knows it (a trace's name): failure lists show it


@dataclass(frozen=True)
class NotSelected:
    """A unit a listing leaves out by the selection (a trace --trace-filter does not match):
    yielded in its place, so the engine counts it as not selected, with the reason."""

    kind: str
    source_id: str
    name: str
    reason: str


TRACES_BEFORE = "requested before --traces-since"


class SourceStore(ABC):
    features: SourceFeatures = SourceFeatures()
    # A bundle holds what its export selected: a transfer from it takes deleted experiments
    # and runs too unless told otherwise. A live store's deleted ones are left out unless asked.
    takes_deleted_by_default: bool = False
    # Its iter_traces applies a Selection's trace_filter (MLflow's trace search) itself; the
    # planner refuses --trace-filter for any other source.
    searches_traces: bool = False

    @abstractmethod
    def describe(self) -> StoreDescription: ...

    def not_read(self) -> list[str]:
        """What the source holds but does not read, a line each: declared before writing
        and recorded among the planned losses."""
        return []

    @abstractmethod
    def list_experiments(self, selection: Selection) -> Iterator[Experiment | Unreadable]:
        """Experiments the selection covers, as trackport.selection.resolve_experiments
        decides (every source calls it on its own listing)."""

    @abstractmethod
    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run | Unreadable]:
        """The experiment's runs in the selection (trackport.selection.select_runs over
        the source's listing), in trackport.selection.run_order: oldest start time first
        (so parents tend to come before their children), runs without one last."""

    @abstractmethod
    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        """The run's whole metric history as batches of domain.METRIC_SCHEMA, sorted by
        (key, step, timestamp, value). NaN and +/-inf as float64; repeated steps kept."""

    @abstractmethod
    def list_artifacts(self, run: Run) -> Iterator[ArtifactFile]:
        """Every artifact file of the run (recursively), sorted by path."""

    @abstractmethod
    def open_artifact(self, run: Run, path: str) -> ContextManager[BinaryIO]:
        """A binary stream of one artifact file; read it in chunks."""

    def metric_summaries(
        self, runs: list[Run], keys: frozenset[str] | None, whole_history: bool = True
    ) -> dict[str, dict[str, MetricSummary]]:
        """For each run (by id), the summaries of its metrics named by keys (all when None):
        what filters and run tables read; without whole_history only the latest points are
        needed (min, max and points may be None then). This reads every history through; a
        source that keeps latest values or can aggregate (a database, a server) answers faster."""
        return {run.run_id: summarize(self.iter_metric_batches(run), keys) for run in runs}

    def count_runs(self, experiment: Experiment, selection: Selection) -> int | None:
        """How many runs iter_runs would give (without a filter), when the source can
        tell cheaply (for progress totals); None where only listing them tells."""
        return None

    def check_run(self, run: Run) -> None:  # noqa: B027 - optional hook
        """Read the run's content through and raise UnitError if any of it is damaged:
        asked before writing into a sink that cannot take back a half-written run. A live
        store has nothing to check beyond what reading it does anyway."""

    def check_unit(self, unit: object) -> None:  # noqa: B027 - optional hook
        """The same for a unit of a generic kind with files (a logged model's artifacts)."""

    def missing_artifact_folder(self, run: Run) -> str | None:
        """The folder where the source looked for the run's artifacts and found none, when
        it reads them from a file system (MLflow takes that for "no artifacts", which it
        also is when the source points at the wrong place); None otherwise."""
        return None

    def unit_notes(self, run: Run) -> list[str]:
        """What reading the run had to do differently (e.g. artifacts read through a
        server because reading them from S3 directly failed), taken once, after its reads."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> SourceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_units(source: SourceStore, kind: UnitKind, experiment: Experiment | None, everything: Selection) -> Iterator[Any] | None:
    """The source's units of a kind, of the experiment (None: of the workspace, as
    `everything` selects): from a store that holds documents of any kind (iter_units) or one
    that reads the kind (iter_<plural>); None when the source holds no units of the kind, or
    the selection leaves the kind."""
    if kind.name in everything.leave_kinds:
        return None
    if kind.name == "trace" and (everything.trace_filter is not None or everything.traces_since is not None):
        return _selected_traces(source, experiment, everything)
    if hasattr(source, "iter_units"):
        return source.iter_units(kind, experiment)
    read = getattr(source, f"iter_{kind.plural}", None)
    return None if read is None else read(everything if experiment is None else experiment)


def _selected_traces(source: SourceStore, experiment: Experiment | None, selection: Selection) -> Iterator[Any] | None:
    """An experiment's traces as --trace-filter and --traces-since take them. A store that
    reads traces (iter_traces(experiment, selection)) applies --traces-since itself, so the
    spans of older traces are not read, and --trace-filter where it searches traces (a
    tracking server); from any other, --trace-filter, MLflow's own search syntax, is refused.
    A bundle's units (iter_units) are left out by their request time here."""
    from trackport.errors import BadInputError
    from trackport.kinds import kind as kind_named

    if experiment is None:
        return None
    if selection.trace_filter is not None and not source.searches_traces:
        raise BadInputError(
            f"{source.describe().uri}: --trace-filter is MLflow's trace search, which only a tracking server applies;"
            " use --traces-since, or copy from the server"
        )
    if not hasattr(source, "iter_units"):
        read = getattr(source, "iter_traces", None)
        return None if read is None else read(experiment, selection)
    listing = source.iter_units(kind_named("trace"), experiment)
    since = selection.traces_since
    return (
        NotSelected(u.kind, u.unit_id, u.name, TRACES_BEFORE)
        if not isinstance(u, Unreadable) and u.body.get("request_time", 0) < since else u
        for u in listing
    )


class RunContent(Protocol):
    """What a sink pulls, lazily, from the source for the run it is writing."""

    def metric_batches(self) -> Iterator[pa.RecordBatch]: ...

    def artifact_files(self) -> Iterator[ArtifactFile]: ...

    def open_artifact(self, path: str) -> ContextManager[BinaryIO]: ...


class UnitContent(Protocol):
    """The files of a unit of a kind that has files (a logged model's artifacts), pulled
    lazily from the source as a sink writes the unit."""

    def artifact_files(self) -> Iterator[ArtifactFile]: ...

    def open_artifact(self, path: str) -> ContextManager[BinaryIO]: ...


@dataclass
class UnitWriteResult:
    """What a sink's put_<kind> / put_unit did, where more than the target id is to say (a
    plain target id means: written, nothing lost)."""

    target_id: str
    outcome: str = "done"  # "done" | "skipped"
    reason: str | None = None  # why it was skipped
    artifact_files: int = 0
    artifact_bytes: int = 0
    losses: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExperimentWriteResult:
    target_experiment_id: TargetExperimentId
    created: bool  # False: the target held it already (found by name), nothing was made


@dataclass
class RunWriteResult:
    target_run_id: TargetRunId
    metric_points: int = 0
    artifact_files: int = 0
    artifact_bytes: int = 0
    losses: list[str] = field(default_factory=list)  # what the sink could not hold exactly


class SinkStore(ABC):
    capabilities: Capabilities
    # What the sink does with values over its length limits: "error" or "truncate".
    on_long_value: str = "error"
    # What it does with a registered model of the target it did not write (EXISTING_MODEL_POLICIES).
    on_existing_model: str = "fail"
    # What the transfer's summary should say about how this sink writes (a mode's trade-off).
    notices: tuple[str, ...] = ()

    @abstractmethod
    def describe(self) -> StoreDescription: ...

    @abstractmethod
    def state_dir(self) -> Path:
        """A local directory, owned by this sink, where the engine keeps the id map and
        ledger of transfers into it."""

    def begin(self, source: StoreDescription, selection: Selection) -> None:  # noqa: B027
        """Called once before the first write."""

    def kind_losses(self, kind_name: str) -> list[str]:
        """What it does not keep of the units of that kind it holds (ids and times a server
        gives anew), a line each: declared before writing."""
        return []

    @abstractmethod
    def put_experiment(self, experiment: Experiment) -> ExperimentWriteResult:
        """Create the experiment, or find the one of that name the target holds. Idempotent."""

    @abstractmethod
    def find_run(self, run: Run, target_experiment_id: TargetExperimentId) -> TargetRunId | None:
        """The target id of a *complete* earlier copy of this source run, if there is one;
        it may clear away incomplete copies that earlier transfers left, before a write."""

    @abstractmethod
    def lookup_run(self, source_run_id: SourceRunId, target_experiment_id: TargetExperimentId) -> TargetRunId | None:
        """The target id of a complete copy of the source run, looked up in the target and
        nowhere else (no side effect): what a reference to that run must name."""

    @abstractmethod
    def put_run(
        self, run: Run, target_experiment_id: TargetExperimentId, content: RunContent
    ) -> RunWriteResult:
        """Write one run whole, or leave nothing visible. run.run_id is the source id;
        its parent tag already holds the parent's target id."""

    def finish_experiment(  # noqa: B027
        self, experiment: Experiment, target_experiment_id: TargetExperimentId
    ) -> None:
        """Called after all of the experiment's runs were written (e.g. to delete it last)."""

    def finish(self, counts: dict) -> None:  # noqa: B027
        """Called once after a transfer in which no unit failed fatally."""

    def close(self) -> None:  # noqa: B027
        """Release the target (its lock): another transfer may write into it now."""

    def __enter__(self) -> SinkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What a sink may do with values over its length limits (SinkStore.on_long_value).
LONG_VALUE_POLICIES = ("error", "truncate")
# What a sink does with a registered model of the same name the target holds and trackport did
# not write (SinkStore.on_existing_model): fail its versions, skip them, append them.
EXISTING_MODEL_POLICIES = ("fail", "skip", "append")


def existing_model_policy(value: str) -> str:
    """value, checked: what a sink does with a registered model it did not write."""
    if value not in EXISTING_MODEL_POLICIES:
        raise ValueError(f"on_existing_model must be one of {EXISTING_MODEL_POLICIES}, not {value!r}")
    return value
