"""Planning a transfer, before anything is written: what the selection takes (the runs
behind the registered models it names included), the experiments it covers, each taken or
left out with the reason, and what the sink cannot hold."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from trackport import kinds
from trackport.domain import DELETED, Capabilities, Experiment
from trackport.errors import BadInputError
from trackport.renames import Renames
from trackport.search import parse
from trackport.selection import runs_of, select_workspace_units, takes_registry
from trackport.stores.base import Selection, SinkStore, SourceStore, Unreadable
from trackport.transfer.units import unit_types, workspace_unit_types

DELETED_REASON = "deleted; add --include-deleted to take it"
IN_DELETED_EXPERIMENT = "its experiment is deleted; add --include-deleted to take it"


@dataclass(frozen=True)
class PlannedExperiment:
    unit: Experiment | Unreadable
    not_selected: str | None = None  # why it is left out (its runs are, too)


@dataclass(frozen=True)
class Plan:
    # The selection as the transfer reads it: with --model, the runs behind the selected
    # versions as run ids (their deleted ones too: a version needs its run).
    selection: Selection
    experiments: list[PlannedExperiment]
    renames: Renames = Renames()  # the names the experiments take in the target


def plan_transfer(source: SourceStore, selection: Selection, renames: Renames = Renames()) -> Plan:
    """What the transfer will take; BadInputError (nothing written yet) for a selection
    that takes nothing, so an empty store or a typo never produces an empty target, or for
    renames that would write two experiments (without --target-experiment) or two
    registered models into one."""
    where = source.describe().uri
    if (selection.models or selection.models_only) and (selection.experiments or selection.narrows_runs):
        raise BadInputError(
            "--model and --models-only take the registry (and with --model the runs behind it); they cannot be"
            " combined with --experiment, --run-id or --filter: run two transfers"
        )
    holds_registry = takes_registry(selection) and next(iter(_listing(source, kinds.REGISTERED_MODEL, selection)), None) is not None
    if selection.models and not holds_registry:
        raise BadInputError(f"{where}: no registered model or prompt matches --model {' '.join(selection.models)}")
    if holds_registry and renames.renames_models:  # two models written as one: refused before writing
        renames.check_models(u.unit_id for u in _listing(source, kinds.REGISTERED_MODEL, selection) if isinstance(u, kinds.Unit))
    if selection.models_only:
        if not holds_registry:
            raise BadInputError(f"{where}: the store holds no registered model or prompt to transfer")
        return Plan(selection, [], renames)
    if selection.models:
        versions = _listing(source, kinds.MODEL_VERSION, selection)
        runs = sorted({u.refs["run"] for u in versions if isinstance(u, kinds.Unit) and "run" in u.refs})
        if not runs:
            return Plan(selection, [], renames)
        selection = dataclasses.replace(selection, run_ids=tuple(runs), include_deleted=True, runs_from_models=True)
    holds_more = holds_registry or (takes_registry(selection) and _holds_workspace_units(source, selection))
    planned = plan_experiments(source, selection, holds_more=holds_more)
    renames.check(p.unit.name for p in planned if isinstance(p.unit, Experiment))
    return Plan(selection, planned, renames)


def _listing(source: SourceStore, kind: kinds.UnitKind, selection: Selection):
    """The source's units of a workspace kind the selection takes (none when it holds none)."""
    unit_type = next(t for t in workspace_unit_types() if t.kind.name == kind.name)
    listing = unit_type.listing(source, None, selection)
    return select_workspace_units(kind, listing, selection) if listing is not None else iter(())


def _holds_workspace_units(source: SourceStore, selection: Selection) -> bool:
    """Whether the store holds units of the whole workspace beyond the registry (evaluation
    datasets): a store of datasets and empty experiments has something to move."""
    return any(next(iter(_listing(source, t.kind, selection)), None) is not None
               for t in workspace_unit_types() if t.kind.name not in (kinds.REGISTERED_MODEL.name, kinds.MODEL_VERSION.name))


def plan_experiments(source: SourceStore, selection: Selection, *, holds_more: bool = False) -> list[PlannedExperiment]:
    """The experiments the selection covers, each taken or left out with the reason;
    refuses a selection that takes nothing (holds_more: the store has other units to move,
    its registry, so holding no runs is no reason to refuse)."""
    where = source.describe().uri
    if selection.filter:
        parse(selection.filter)  # a malformed filter is refused before anything is opened for writing
    if selection.trace_filter is not None and not source.searches_traces:
        raise BadInputError(f"{where}: --trace-filter is MLflow's trace search, which only a tracking server applies;"
                            " use --traces-since, or copy from the server")
    planned = []
    for unit in source.list_experiments(dataclasses.replace(selection, include_deleted=True)):
        deleted = isinstance(unit, Experiment) and unit.lifecycle_stage == DELETED
        planned.append(PlannedExperiment(unit, DELETED_REASON if deleted and not selection.include_deleted else None))
    if holds_more and not (selection.experiments or selection.narrows_runs):
        return planned
    if not planned:
        raise BadInputError(f"{where}: no experiment matches the selection; check --experiment / --run-id")
    taken = [p.unit for p in planned if p.not_selected is None]
    if not taken:
        names = ", ".join(repr(p.unit.name) for p in planned[:5])
        raise BadInputError(f"{where}: the selected experiments are deleted ({names}); add --include-deleted")
    if selection.trace_filter is not None and "trace" not in selection.leave_kinds:
        for experiment in (e for e in taken if isinstance(e, Experiment)):
            source.check_trace_filter(experiment, selection.trace_filter)  # a filter the server refuses stops here
            break
    if not selection.experiments and not any(
        isinstance(e, Unreadable) or next(iter(runs_of(source, e, selection)), None) for e in taken
    ) and not (not selection.narrows_runs and any(_holds_units(source, e, selection) for e in taken)):
        raise BadInputError(
            f"{where}: the store holds no runs to transfer"
            + ("" if selection.include_deleted else " (add --include-deleted for deleted ones)")
        )
    return planned


def _holds_units(source: SourceStore, experiment: Experiment, selection: Selection) -> bool:
    """Whether the experiment holds units of a kind beyond runs (traces of a GenAI workspace
    with no runs at all): its first unit of each kind, read until one is found."""
    for unit_type in unit_types()[1:]:
        listing = unit_type.listing(source, experiment, dataclasses.replace(selection, include_deleted=True))
        if listing is not None:
            try:
                if next(iter(listing), None) is not None:
                    return True
            finally:
                getattr(listing, "close", lambda: None)()
    return False


def declared_losses(source: SourceStore, sink: SinkStore) -> list[str]:
    """What the sink will not hold exactly, said before anything is written: from its
    capabilities, the kinds the source may hold that the sink has no place for, and what it
    does not keep of a kind it holds (sink.kind_losses(kind name))."""
    types = [t for t in unit_types() + workspace_unit_types() if hasattr(source, "iter_units") or hasattr(source, f"iter_{t.kind.plural}")]
    return planned_losses(sink.capabilities, sink.on_long_value) + [
        f"{t.kind.plural}: the target cannot hold them; each is recorded as skipped" for t in types if not t.holds(sink)
    ] + [loss for t in types if t.holds(sink) for loss in sink.kind_losses(t.kind.name)]


def not_read_by_source(source: SourceStore) -> list[str]:
    """What the source holds but does not read (SourceStore.not_read)."""
    return list(source.not_read())


def planned_losses(capabilities: Capabilities, on_long_value: str = "error") -> list[str]:
    """One line per kind of data the sink will not hold exactly, from its capabilities."""
    losses = []
    if not capabilities.keeps_run_ids:
        losses.append(
            "run ids: the target assigns new ones; idmap.jsonl maps them and each run keeps its"
            " source id in the tag trackport.source.run_id"
        )
    if not capabilities.keeps_experiment_ids:
        losses.append("experiment ids: the target assigns new ones (mapped in idmap.jsonl)")
    if not capabilities.keeps_model_ids:
        losses.append(
            "logged model ids: the target assigns new ones (mapped in idmap.jsonl; models:/ sources,"
            " MLmodel files and run links rewritten; each keeps its source id in trackport.source.id)"
        )
    if not capabilities.keeps_experiment_times:
        losses.append("experiment creation and last-update times: the target sets them to the time of writing")
    if not capabilities.keeps_times:
        losses.append("run start and end times: the target sets them to the time of writing")
    if not capabilities.keeps_registry_times:
        losses.append(
            "times of logged models, registered models and versions, and the users of versions:"
            " the target sets them when writing"
        )
    if not capabilities.keeps_users:
        losses.append("run users: runs belong to the user whose credentials write them")
    if not capabilities.keeps_deleted_time:
        losses.append("deleted runs: their deleted_time becomes the time of writing")
    if not capabilities.keeps_infinity:
        losses.append(
            "metric values ±inf: stored as ±1.7976931348623157e308 by the target (a logged model's NaN as 0)"
        )
    action = "the run fails (--on-long-value truncate cuts them instead)" if on_long_value == "error" else "cut to the limit"
    if capabilities.max_param_value_length:
        losses.append(f"param values over {capabilities.max_param_value_length} characters: {action}")
    if capabilities.max_tag_value_length:
        losses.append(f"tag values over {capabilities.max_tag_value_length} characters: {action}")
    return losses
