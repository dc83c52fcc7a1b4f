"""Field-by-field comparison of what two stores hold: the proof that nothing was lost.

Both sides are read through the SourceStore interface, so any pair of stores compares
(store vs store, bundle vs store). Runs are matched through the id map when the target
assigned new ids.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, fields
from typing import Callable, Iterator

import pyarrow as pa

import pyarrow.compute as pc

from trackport.domain import DELETED, METRIC_SCHEMA, PARENT_RUN_ID_TAG, Experiment, Run
from trackport.stores.base import NotSelected, Selection, SourceStore, Unreadable
from trackport.renames import Renames
from trackport.selection import runs_of, select_workspace_units, takes_registry
from trackport.transfer.compare_units import compare_units, sha256_of
from trackport.transfer.renamed_units import expected_listing
from trackport.transfer.units import unit_types, workspace_unit_types
from trackport.provenance import (
    SOURCE_RUN_ID_TAG,
    is_mlmodel,
    is_partial_copy,
    is_provenance_tag,
    rewrite_mlmodel,
    rewrite_tag,
)

LEVELS = ("fast", "full")
_RUN_FIELDS = ("run_name", "user_id", "status", "start_time", "end_time", "lifecycle_stage")
_MAX_FLOAT = 1.7976931348623157e308  # what SQL-backed MLflow servers store for ±inf


@dataclass(frozen=True)
class Difference:
    where: str  # "experiment <name>" or "run <name> (<id>)"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def compare_stores(
    expected: SourceStore,
    actual: SourceStore,
    selection: Selection = Selection(),
    *,
    level: str = "full",
    run_id_map: Callable[[str], str | None] | None = None,
    renames: Renames = Renames(),
    clamps_infinity: bool | None = None,
) -> Iterator[Difference]:
    """Every difference between what `expected` holds in the selection and what `actual`
    holds for it. `fast` compares counts and sizes; `full` every field, point and byte.

    Runs are matched through run_id_map, or else by the provenance tag trackport writes
    into targets that assign new ids, or else by id. The comparison allows exactly what a
    transfer changes on purpose: ids (also the run's own id inside its tags and MLmodel
    files), trackport's provenance tags in the target, the deleted partial copies that
    interrupted transfers leave in a server, and ±inf stored clamped when clamps_infinity
    (by default: when the actual store declares it does)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}")
    if clamps_infinity is None:
        clamps_infinity = actual.features.clamps_infinity
    everything = Selection(include_deleted=True)
    actual_experiments = {}
    for e in actual.list_experiments(everything):
        if isinstance(e, Unreadable):
            yield Difference(f"experiment {e.source_id}", f"unreadable in the target: {e.reason}")
        else:
            actual_experiments[e.name] = e
    # Source -> target ids of what was compared, for the references of workspace units.
    matched: dict[tuple[str, str], str | None] = {}
    for experiment in () if selection.models_only else expected.list_experiments(selection):
        if isinstance(experiment, Unreadable):
            yield Difference(f"experiment {experiment.source_id}", f"unreadable: {experiment.reason}")
            continue
        where = f"experiment {experiment.name!r}"
        other = actual_experiments.get(renames.experiment(experiment.name))
        if other is None:
            yield Difference(where, "missing")
            continue
        if level == "full" and renames.target is None:  # --target-experiment: no copy of any one experiment
            yield from _compare_experiment(where, experiment, other)
        matched[("experiment", experiment.experiment_id)] = other.experiment_id
        copies: dict[str, list[Run]] = {}
        for r in actual.iter_runs(other, everything):
            if isinstance(r, Unreadable):
                yield Difference(f"run {r.source_id}", f"unreadable in the target: {r.reason}")
                continue
            if r.lifecycle_stage == DELETED and is_partial_copy(r.tags):
                continue  # what an interrupted transfer left in a server, which cannot purge it
            source_id = r.run_id if run_id_map else r.tags.get(SOURCE_RUN_ID_TAG, r.run_id)
            copies.setdefault(source_id, []).append(r)
        by_target = {r.run_id: r for found in copies.values() for r in found}
        if run_id_map is None:
            mapped = {source_id: found[0].run_id for source_id, found in copies.items()}
            id_map: Callable[[str], str | None] = lambda run_id, m=mapped: m.get(run_id, run_id)  # noqa: E731
        else:
            id_map = run_id_map
        for run in runs_of(expected, experiment, selection):
            if isinstance(run, Unreadable):
                yield Difference(f"run {run.source_id}", f"unreadable: {run.reason}")
                continue
            run_where = f"run {run.run_name!r} ({run.run_id})"
            matched[("run", run.run_id)] = id_map(run.run_id)
            if run_id_map is None and len(copies.get(run.run_id, ())) > 1:
                ids = ", ".join(r.run_id for r in copies[run.run_id])
                yield Difference(run_where, f"{len(copies[run.run_id])} copies in the target ({ids})")
            other_run = by_target.get(id_map(run.run_id) or "")
            if other_run is None:
                yield Difference(run_where, "missing")
                continue
            yield from _compare_run(run_where, expected, run, actual, other_run, level, id_map, clamps_infinity)
        yield from _compare_units(
            where, expected, experiment, actual, other,
            lambda k, i: id_map(i) if k == "run" else matched.get((k, i), i), matched, level, selection, clamps_infinity,
            renames,
        )
    if takes_registry(selection):
        yield from _compare_units(
            "the workspace", expected, None, actual, None, lambda k, i: matched.get((k, i), i), matched, level, selection,
            clamps_infinity, renames,
        )


def _compare_units(
    where: str,
    expected: SourceStore,
    experiment: Experiment | None,
    actual: SourceStore,
    other: Experiment | None,
    id_map,
    matched: dict,
    level: str,
    selection: Selection,
    clamps: bool,
    renames: Renames,
) -> Iterator[Difference]:
    """Units of the other registered kinds (the workspace's when experiment is None):
    transfer/compare_units.py; registered models expected under their new names."""
    everything = Selection(include_deleted=True, leave_kinds=selection.leave_kinds)
    # the expected side's traces as --trace-filter / --traces-since take them (NotSelected: left out)
    taken = dataclasses.replace(everything, trace_filter=selection.trace_filter, traces_since=selection.traces_since)
    for unit_type in unit_types()[1:] if experiment is not None else workspace_unit_types():
        mine = unit_type.listing(expected, experiment, selection if experiment is None else taken)
        if mine is None:
            continue
        mine = (u for u in mine if not isinstance(u, NotSelected))
        if experiment is None:
            mine = select_workspace_units(unit_type.kind, mine, selection)
        else:  # as the engine takes them: deleted ones with include_deleted, with their run when runs are picked
            mine = (
                u for u in mine
                if isinstance(u, Unreadable) or (
                    (selection.include_deleted or not unit_type.deleted(u))
                    and (not selection.narrows_runs or unit_type.anchor(u) in matched)
                )
            )
        mine = expected_listing(renames, mine)
        theirs = unit_type.listing(actual, other, everything)
        for place, what in compare_units(where, unit_type, expected, mine, actual, theirs, id_map, matched, level, clamps):
            yield Difference(place, what)


def _compare_experiment(where: str, a: Experiment, b: Experiment) -> Iterator[Difference]:
    if a.lifecycle_stage != b.lifecycle_stage:
        yield Difference(where, f"lifecycle_stage {a.lifecycle_stage!r} != {b.lifecycle_stage!r}")
    yield from _compare_mapping(where, "tag", _without_provenance(a.tags), _without_provenance(b.tags))


def _without_provenance(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not is_provenance_tag(k)}


def _compare_run(
    where: str,
    source: SourceStore,
    a: Run,
    target: SourceStore,
    b: Run,
    level: str,
    run_id_map: Callable[[str], str | None],
    clamps_infinity: bool,
) -> Iterator[Difference]:
    if level == "full":
        for name in _RUN_FIELDS:
            if getattr(a, name) != getattr(b, name):
                yield Difference(where, f"{name} {getattr(a, name)!r} != {getattr(b, name)!r}")
        yield from _compare_mapping(where, "param", a.params, b.params)
        expected_tags = {k: rewrite_tag(k, v, a.run_id, b.run_id) for k, v in _without_provenance(a.tags).items()}
        if a.parent_run_id:
            expected_tags[PARENT_RUN_ID_TAG] = run_id_map(a.parent_run_id) or a.parent_run_id
        yield from _compare_mapping(where, "tag", expected_tags, _without_provenance(b.tags))
        if sorted(map(_dataset_key, a.inputs)) != sorted(map(_dataset_key, b.inputs)):
            yield Difference(where, "dataset inputs differ")
    yield from _compare_metrics(where, source, a, target, b, level, clamps_infinity)
    yield from _compare_artifacts(where, source, a, target, b, level)


def _compare_mapping(where: str, kind: str, a: dict, b: dict) -> Iterator[Difference]:
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            yield Difference(where, f"{kind} {key!r} missing")
        elif key not in a:
            yield Difference(where, f"{kind} {key!r} unexpected")
        elif a[key] != b[key]:
            yield Difference(where, f"{kind} {key!r}: {a[key]!r} != {b[key]!r}")


def _dataset_key(d) -> tuple:
    return tuple((f.name, repr(getattr(d, f.name))) for f in fields(d))


def _metric_table(store: SourceStore, run: Run, clamp_infinity: bool = False) -> pa.Table:
    table = pa.Table.from_batches(list(store.iter_metric_batches(run)), schema=METRIC_SCHEMA)
    if clamp_infinity:
        value = table.column("value")
        value = pc.if_else(pc.equal(value, float("inf")), _MAX_FLOAT, value)
        value = pc.if_else(pc.equal(value, float("-inf")), -_MAX_FLOAT, value)
        table = table.set_column(3, "value", value)
    return table


def _compare_metrics(
    where: str, source: SourceStore, a: Run, target: SourceStore, b: Run, level: str, clamps_infinity: bool
) -> Iterator[Difference]:
    ta, tb = _metric_table(source, a, clamps_infinity), _metric_table(target, b)
    if ta.num_rows != tb.num_rows:
        yield Difference(where, f"{ta.num_rows} metric points expected, {tb.num_rows} found")
        return
    if level == "fast":
        return
    rows_a = sorted(zip(*(ta.column(c).to_pylist() for c in ("key", "step", "timestamp", "value"))), key=_point_key)
    rows_b = sorted(zip(*(tb.column(c).to_pylist() for c in ("key", "step", "timestamp", "value"))), key=_point_key)
    for pa_, pb in zip(rows_a, rows_b):
        if _point_key(pa_) != _point_key(pb):
            yield Difference(where, f"metric point {pa_} != {pb}")
            return


def _point_key(point: tuple) -> tuple:
    key, step, timestamp, value = point
    # NaN compares unequal to itself; give it a fixed place and identity.
    return (key, step, timestamp, math.isnan(value), 0.0 if math.isnan(value) else value)


def _compare_artifacts(
    where: str, source: SourceStore, a: Run, target: SourceStore, b: Run, level: str
) -> Iterator[Difference]:
    files_a = {f.path: f.size for f in source.list_artifacts(a)}
    files_b = {f.path: f.size for f in target.list_artifacts(b)}
    for path in sorted(files_a.keys() | files_b.keys()):
        if path not in files_b:
            yield Difference(where, f"artifact {path!r} missing")
        elif path not in files_a:
            yield Difference(where, f"artifact {path!r} unexpected")
        elif files_a[path] != files_b[path]:
            yield Difference(where, f"artifact {path!r}: {files_a[path]} bytes expected, {files_b[path]} found")
        elif level == "full" and _expected_sha256(source, a, path, b.run_id) != _sha256(target, b, path):
            yield Difference(where, f"artifact {path!r}: content differs (sha256)")


def _sha256(store: SourceStore, run: Run, path: str) -> str:
    return sha256_of(store.open_artifact(run, path))


def _expected_sha256(store: SourceStore, run: Run, path: str, target_run_id: str) -> str:
    """The hash the target copy must have: MLmodel files name their run, so they carry
    the target's run id."""
    if not is_mlmodel(path) or run.run_id == target_run_id:
        return _sha256(store, run, path)
    with store.open_artifact(run, path) as stream:
        return hashlib.sha256(rewrite_mlmodel(stream.read(), {run.run_id: target_run_id})).hexdigest()
