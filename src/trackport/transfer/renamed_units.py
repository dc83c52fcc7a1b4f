"""Registered models (prompts too) written under other names (`--rename-model`,
`--rename-model-prefix`, a mapping file): applied to the units where they are handed to the
sink, so that no sink knows of renames.

A sink is handed a registered model as if the source had named it NEW: its id and name
NEW, its versions' ids `NEW/<number>` (a version's "registered model" and "previous
version" references follow on their own: they resolve to the target ids the engine got for
them). A logged model's list of the versions registered from it (`mlflow.modelVersions`)
names the new names. The id map, ledger and summary keep the source's ids (`churn ->
staging-churn`, `churn/3 -> staging-churn/3`). Verify renames what it expects the same way
(as_expected), references included.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Iterator

from trackport import kinds
from trackport.domain import ACTIVE, Experiment
from trackport.kinds import Unit
from trackport.models import MODEL_VERSIONS_TAG, split_version_id, version_id
from trackport.renames import Renames
from trackport.stores.base import SinkStore, SourceStore, Unreadable
from trackport.transfer.units import Key, Moved, UnitType

_RENAMED_KINDS = (kinds.REGISTERED_MODEL.name, kinds.MODEL_VERSION.name, kinds.LOGGED_MODEL.name)


def experiment_as_written(renames: Renames, experiment: Experiment) -> Experiment:
    """The experiment as the sink is handed it: under its new name; with --target-experiment
    the one experiment every run goes into, which takes none of the source experiments'
    tags, deleted state or times (it is no copy of any one of them: a new one is made now,
    one the target holds is written into as it is)."""
    if renames.target is None:
        return dataclasses.replace(experiment, name=renames.experiment(experiment.name))
    return dataclasses.replace(
        experiment, name=renames.target, tags={}, lifecycle_stage=ACTIVE, creation_time=None, last_update_time=None,
    )


def target_experiment_note(renames: Renames) -> list[str]:
    """What the target does not hold of the source experiments with --target-experiment."""
    if renames.target is None:
        return []
    return [(
        f"experiments: every selected run goes into {renames.target!r} (--target-experiment), which takes none of"
        " the source experiments' tags, deleted state or times; each run keeps its provenance"
    )]


def renamed_id(renames: Renames, kind: str, unit_id: str) -> str:
    """The id a unit of the registry takes in the target when its model is renamed."""
    if kind == kinds.REGISTERED_MODEL.name:
        return renames.model(unit_id)
    if kind == kinds.MODEL_VERSION.name:
        try:
            name, number = split_version_id(unit_id)
        except ValueError:  # not a version id: left as it is (the sink says what is wrong)
            return unit_id
        return version_id(renames.model(name), number)
    return unit_id


def as_written(renames: Renames, unit: Unit) -> Unit:
    """The unit as the sink is handed it (its references still the source's: the engine
    resolves them)."""
    if unit.kind in (kinds.REGISTERED_MODEL.name, kinds.MODEL_VERSION.name):
        new_id = renamed_id(renames, unit.kind, unit.unit_id)
        name = renames.model(unit.name) if unit.kind == kinds.REGISTERED_MODEL.name else unit.name
        return dataclasses.replace(unit, unit_id=new_id, name=name)
    if unit.kind == kinds.LOGGED_MODEL.name:
        tags = unit.body.get("tags")
        if isinstance(tags, dict) and MODEL_VERSIONS_TAG in tags:
            renamed = _registered_versions(renames, tags[MODEL_VERSIONS_TAG])
            return dataclasses.replace(unit, body={**unit.body, "tags": {**tags, MODEL_VERSIONS_TAG: renamed}})
    return unit


def as_expected(renames: Renames, unit: Unit) -> Unit:
    """The unit as verify expects its copy: as written, and its references to the
    registry renamed too."""
    written = as_written(renames, unit)
    refs = {n: renamed_id(renames, kinds.ref_kind(n), v) for n, v in written.refs.items()}
    return dataclasses.replace(written, refs=refs)


def expected_listing(renames: Renames, units: Iterable[Any]) -> Iterator[Any]:
    for unit in units:
        yield unit if isinstance(unit, Unreadable) or not renames.renames_models else as_expected(renames, unit)


def _registered_versions(renames: Renames, value: str) -> str:
    """mlflow.modelVersions ([{"name": ..., "version": ...}, ...]) naming the new names; a
    value that is not such a list is kept as it is."""
    try:
        entries = json.loads(value)
        renamed = [{**e, "name": renames.model(str(e["name"]))} for e in entries]
    except (ValueError, TypeError, KeyError):
        return value
    return value if renamed == entries else json.dumps(renamed)


def with_renamed_models(unit_types: list[UnitType], renames: Renames) -> list[UnitType]:
    """The unit types, those of the registry's kinds (and logged models) writing renamed units."""
    if not renames.renames_models:
        return unit_types
    return [RenamedUnits(t, renames) if t.kind.name in _RENAMED_KINDS else t for t in unit_types]


class RenamedUnits(UnitType):
    """A unit type whose units are handed to the sink renamed (as_written), and whose
    copies are looked up in the target under the new names. Ids recorded stay the source's."""

    def __init__(self, inner: UnitType, renames: Renames) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.renames = renames

    def listing(self, source: SourceStore, experiment, everything) -> Iterator[Any] | None:
        return self.inner.listing(source, experiment, everything)

    def holds(self, sink: SinkStore) -> bool:
        return self.inner.holds(sink)

    def source_id(self, unit: Any) -> str:
        return self.inner.source_id(unit)

    def name(self, unit: Any) -> str:
        return self.inner.name(unit)

    def deleted(self, unit: Any) -> bool:
        return self.inner.deleted(unit)

    def dependencies(self, unit: Any) -> list[Key]:
        return self.inner.dependencies(unit)

    def lookup(self, sink: SinkStore, source_id: str, target_experiment_id: str) -> str | None:
        return self.inner.lookup(sink, renamed_id(self.renames, self.kind.name, source_id), target_experiment_id)

    def dependency_name(self, dependency: Key) -> str:
        return self.inner.dependency_name(dependency)

    def home_experiment(self, unit: Any) -> str | None:
        return self.inner.home_experiment(unit)

    def anchor(self, unit: Any) -> Key | None:
        return self.inner.anchor(unit)

    def move(self, source: SourceStore, sink: SinkStore, unit: Any, target_experiment_id: str, targets: dict) -> Moved:
        return self.inner.move(source, sink, as_written(self.renames, unit), target_experiment_id, targets)
