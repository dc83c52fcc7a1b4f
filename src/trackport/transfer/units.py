"""How the engine moves a unit of each kind: one `UnitType` per kind, all driven the same way.

A unit type says where the source lists the kind's units (per experiment), which other
units each one depends on, where a dependency is found in the target, and how one unit is
written. The engine (transfer/scheduler.py) does the rest for every kind alike: the order
of dependencies, the bounded pool, the id map, ledger, summary and progress.

Runs are one unit type (`RunUnits`). Every other registered kind (trackport.kinds) is a
`DocumentUnits` unless a richer type is registered for it: its units are `kinds.Unit`
documents that a store lists with `iter_units(kind, experiment)` (a bundle, for any kind)
or `iter_<plural>(experiment)` (`iter_<plural>(selection)` for a kind of the workspace),
and writes with `put_unit(unit, target_experiment_id)` / `find_unit(...)` or
`put_<name>(...)` / `find_<name>(...)`; a kind with files (a logged model) is listed and
read with `list_unit_artifacts(unit)` / `open_unit_artifact(unit, path)` and written with
the files as a third argument of put. A store without those methods does not hold the kind.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator

import pyarrow as pa

from trackport import kinds
from trackport.domain import DELETED, PARENT_RUN_ID_TAG, ArtifactFile, Experiment, Run, SourceRunId
from trackport.fingerprint import Fingerprint, fingerprint
from trackport.selection import runs_of
from trackport.stores.base import Selection, SinkStore, SourceStore, Unreadable, UnitWriteResult, read_units

Key = tuple[str, str]  # (kind name, source id)


@dataclass
class Moved:
    """What writing one unit did."""

    target_id: str
    outcome: str = "done"  # "done" | "skipped"
    reason: str | None = None  # why it was skipped
    amounts: dict[str, int] = field(default_factory=dict)  # "metric_points", ... -> how many
    losses: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing_artifact_folder: str | None = None


class UnitType(ABC):
    kind: kinds.UnitKind

    @abstractmethod
    def listing(self, source: SourceStore, experiment: Experiment, everything: Selection) -> Iterator[Any] | None:
        """The experiment's units of this kind (and Unreadable for damaged ones), deleted
        ones too; None when the source does not hold the kind at all."""

    def holds(self, sink: SinkStore) -> bool:
        """Whether the sink can hold this kind (if not: declared before writing, and each
        unit is recorded as skipped with the reason)."""
        return True

    @abstractmethod
    def source_id(self, unit: Any) -> str: ...

    def name(self, unit: Any) -> str:
        return ""

    def deleted(self, unit: Any) -> bool:
        return False

    def dependencies(self, unit: Any) -> list[Key]:
        """The units inside the experiment this one refers to (the experiment itself aside)."""
        return []

    def lookup(self, sink: SinkStore, source_id: str, target_experiment_id: str) -> str | None:
        """The target id of the target's complete copy of a unit of this kind (no side
        effect): where a dependency that is not part of this transfer is found."""
        return None

    def dependency_name(self, dependency: Key) -> str:
        """How messages name a dependency of this kind's units: "run 3f2a..."."""
        return f"{dependency[0]} {dependency[1]}"

    def home_experiment(self, unit: Any) -> str | None:
        """The source experiment the unit's dependencies live in (for a workspace unit,
        the one it names), where their copies are looked up in the target."""
        return None

    def anchor(self, unit: Any) -> Key | None:
        """The run the unit belongs to, if it belongs to one (a logged model: its source
        run): when the selection takes only some runs, the unit is taken with its run."""
        return None

    @abstractmethod
    def move(
        self, source: SourceStore, sink: SinkStore, unit: Any, target_experiment_id: str, targets: dict[Key, str | None]
    ) -> Moved:
        """Write one unit whole (or find it complete in the target). targets: each
        dependency's target id, None where the target holds no copy of it."""


class SourceRunContent:
    """Lets a sink pull one run's metrics and artifacts from the source as it writes;
    artifacts: the run's artifact listing when it was read already (for its fingerprint)."""

    def __init__(self, source: SourceStore, run: Run, artifacts: list[ArtifactFile] | None = None) -> None:
        self._source = source
        self._run = run
        self._artifacts = artifacts

    def metric_batches(self) -> Iterator[pa.RecordBatch]:
        return self._source.iter_metric_batches(self._run)

    def artifact_files(self) -> Iterator[ArtifactFile]:
        return iter(self._artifacts) if self._artifacts is not None else self._source.list_artifacts(self._run)

    def open_artifact(self, path: str) -> AbstractContextManager[BinaryIO]:
        return self._source.open_artifact(self._run, path)


class RunUnits(UnitType):
    """A run depends on its parent run: a child is written after its parent, with the
    parent link naming the parent's copy in the target."""

    kind = kinds.RUN

    def listing(self, source: SourceStore, experiment: Experiment, everything: Selection) -> Iterator[Run | Unreadable]:
        return runs_of(source, experiment, everything)

    def source_id(self, unit: Run) -> str:
        return unit.run_id

    def name(self, unit: Run) -> str:
        return unit.run_name

    def deleted(self, unit: Run) -> bool:
        return unit.lifecycle_stage == DELETED

    def dependencies(self, unit: Run) -> list[Key]:
        return [("run", unit.parent_run_id)] if unit.parent_run_id else []

    def lookup(self, sink: SinkStore, source_id: str, target_experiment_id: str) -> str | None:
        return sink.lookup_run(SourceRunId(source_id), target_experiment_id)

    def dependency_name(self, dependency: Key) -> str:
        return f"parent run {dependency[1]}" if dependency[0] == "run" else super().dependency_name(dependency)

    def move(self, source: SourceStore, sink: SinkStore, run: Run, target_experiment_id: str, targets: dict) -> Moved:
        remapped, losses = remap_parent(run, targets)
        existing = sink.find_run(remapped, target_experiment_id)
        if existing is not None:
            return Moved(existing, "skipped", "already complete in the target")
        return self.write(source, run, losses, lambda: sink.put_run(remapped, target_experiment_id, SourceRunContent(source, run)), sink)

    @staticmethod
    def write(source: SourceStore, run: Run, losses: list[str], put: Callable[[], Any], sink: SinkStore) -> Moved:
        """Write a run with put() (a RunWriteResult): a damaged run is refused first where
        the sink cannot undo a run it failed to write; a missing artifact folder is noted."""
        if not sink.capabilities.undoes_failed_runs:
            source.check_run(run)  # a damaged run is refused before anything of it is written
        missing = source.missing_artifact_folder(run)
        result = put()
        return Moved(
            result.target_run_id,
            amounts={
                "metric_points": result.metric_points,
                "artifact_files": result.artifact_files,
                "artifact_bytes": result.artifact_bytes,
            },
            losses=losses + result.losses,
            notes=([f"no artifact folder at {missing}"] if missing else []) + source.unit_notes(run),
            missing_artifact_folder=missing,
        )


def source_fingerprint(source: SourceStore, run: Run) -> tuple[Fingerprint, list[ArtifactFile]]:
    """The run's fingerprint from what its source gives cheaply (its listing, latest metric
    points, artifact paths and sizes), and the artifact listing read for it."""
    latest = source.metric_summaries([run], None, whole_history=False).get(run.run_id, {})
    artifacts = list(source.list_artifacts(run))
    return fingerprint(run, latest, artifacts), artifacts


def remap_parent(run: Run, targets: dict[Key, str | None]) -> tuple[Run, list[str]]:
    parent = run.parent_run_id
    if not parent:
        return run, []
    target_parent = targets.get(("run", parent))
    if target_parent is None:
        return run, [f"parent run {parent} is not in the target; {PARENT_RUN_ID_TAG} keeps its source id"]
    if target_parent == parent:
        return run, []
    return dataclasses.replace(run, tags={**run.tags, PARENT_RUN_ID_TAG: target_parent}), []


class _SourceUnitContent:
    """Lets a sink pull one unit's files from the source as it writes."""

    def __init__(self, source: SourceStore, unit: kinds.Unit) -> None:
        self._source = source
        self._unit = unit

    def artifact_files(self) -> Iterator[ArtifactFile]:
        return self._source.list_unit_artifacts(self._unit)

    def open_artifact(self, path: str) -> AbstractContextManager[BinaryIO]:
        return self._source.open_unit_artifact(self._unit, path)


class DocumentUnits(UnitType):
    """A registered kind whose units are kinds.Unit documents (see the module docstring)."""

    def __init__(self, kind: kinds.UnitKind) -> None:
        self.kind = kind

    def listing(self, source: SourceStore, experiment: Experiment | None, everything: Selection) -> Iterator[Any] | None:
        """experiment None: the workspace's units."""
        return read_units(source, self.kind, experiment, everything)

    def _sink_method(self, sink: SinkStore, verb: str) -> Callable | None:
        """sink.put_unit / find_unit (any kind), else put_<kind> / find_<kind>."""
        return getattr(sink, f"{verb}_unit", None) or getattr(sink, f"{verb}_{self.kind.name}", None)

    def holds(self, sink: SinkStore) -> bool:
        return self._sink_method(sink, "put") is not None

    def source_id(self, unit: kinds.Unit) -> str:
        return unit.unit_id

    def name(self, unit: kinds.Unit) -> str:
        return unit.name

    def deleted(self, unit: kinds.Unit) -> bool:
        return unit.body.get("lifecycle_stage") == DELETED

    def dependencies(self, unit: kinds.Unit) -> list[Key]:
        """Every unit its refs name (its own experiment aside), once."""
        keys = ((kinds.ref_kind(n), i) for n, i in sorted(unit.refs.items()))
        return list(dict.fromkeys(k for k in keys if k[0] != "experiment" or unit.experiment_id is None))

    def anchor(self, unit: kinds.Unit) -> Key | None:
        return ("run", unit.refs["run"]) if "run" in unit.refs else None

    def home_experiment(self, unit: kinds.Unit) -> str | None:
        return unit.experiment_id or unit.refs.get("experiment")

    def lookup(self, sink: SinkStore, source_id: str, target_experiment_id: str | None) -> str | None:
        """sink.lookup_unit(kind name, ...) (any kind), else lookup_<kind>(...)."""
        if hasattr(sink, "lookup_unit"):
            return sink.lookup_unit(self.kind.name, source_id, target_experiment_id)
        find = getattr(sink, f"lookup_{self.kind.name}", None)
        return None if find is None else find(source_id, target_experiment_id)

    def move(self, source: SourceStore, sink: SinkStore, unit: kinds.Unit, target_experiment_id: str | None, targets: dict) -> Moved:
        refs, losses, missing = {}, [], set()
        for ref_name, source_ref in unit.refs.items():
            kind = kinds.ref_kind(ref_name)
            if kind == "experiment" and source_ref == unit.experiment_id:
                refs[ref_name] = target_experiment_id or source_ref  # its own
                continue
            target_ref = targets.get((kind, source_ref))
            if target_ref is None:
                losses.append(f"its {kind} {source_ref} is not in the target; the reference keeps its source id")
                missing.add(ref_name)
            refs[ref_name] = target_ref or source_ref
        remapped = dataclasses.replace(unit, refs=refs, source_refs=dict(unit.refs), missing=frozenset(missing))
        find = self._sink_method(sink, "find")
        existing = find(remapped, target_experiment_id) if find else None
        if existing is not None:
            return Moved(existing, "skipped", "already complete in the target")
        put = self._sink_method(sink, "put")
        if self.kind.has_files:
            if not sink.capabilities.undoes_failed_runs:
                source.check_unit(unit)  # damaged files are refused before anything is written
            written = put(remapped, target_experiment_id, _SourceUnitContent(source, unit))
        else:
            written = put(remapped, target_experiment_id)
        if not isinstance(written, UnitWriteResult):
            written = UnitWriteResult(written)
        amounts = {"artifact_files": written.artifact_files, "artifact_bytes": written.artifact_bytes} if self.kind.has_files else {}
        if written.outcome == "skipped":  # nothing written: no reference of it lost
            losses = []
        return Moved(written.target_id, written.outcome, written.reason, amounts, losses + written.losses)


_TYPES: dict[str, UnitType] = {}


def register_type(unit_type: UnitType) -> None:
    """A richer unit type for a registered kind than DocumentUnits (e.g. one with files)."""
    _TYPES[unit_type.kind.name] = unit_type


def unit_types(run_units: RunUnits | None = None) -> list[UnitType]:
    """Every kind moved inside an experiment, in dependency order: runs (as run_units moves
    them, RunUnits by default), then the others."""
    return [run_units or RunUnits()] + [_TYPES.get(k.name) or DocumentUnits(k) for k in kinds.generic_kinds()]


def workspace_unit_types() -> list[UnitType]:
    """The kinds of the whole workspace, moved after every experiment, in dependency order."""
    return [_TYPES.get(k.name) or DocumentUnits(k) for k in kinds.generic_kinds("workspace")]
