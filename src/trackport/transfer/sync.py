"""`trackport sync SOURCE TARGET`: a repeatable one-way sync, and its dry run.

A sync is a transfer (transfer/engine.py) whose runs move as SyncRunUnits decides
(transfer/sync_runs.py): new runs are copied, changed ones brought up to date in place, runs
gone from the source have their copies marked deleted, copies edited in the target are
conflicts. Before it, experiments renamed at the source since the last sync are renamed in
the target, so that their runs are not copied again under the new name. Its records
(transfer/sync_state.py) live beside the target's id map and ledger.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from trackport.config import DEFAULT, TransferConfig
from trackport.domain import Experiment, Run
from trackport.errors import BadInputError
from trackport.patching import RunPatcher
from trackport.provenance import COMPLETE_TAG, SOURCE_RUN_ID_TAG
from trackport.renames import Renames
from trackport.selection import runs_of
from trackport.stores.base import Selection, SinkStore, SourceStore, StoreDescription, Unreadable
from trackport.transfer.engine import ProgressCallback, transfer
from trackport.transfer.idmap import IdMap
from trackport.transfer.plan import Plan, plan_transfer
from trackport.transfer.summary import Summary
from trackport.transfer.sync_diff import run_difference
from trackport.transfer.sync_runs import SyncOptions, SyncRunUnits, TargetIndex, decide
from trackport.transfer.units import source_fingerprint
from trackport.transfer.sync_state import ExperimentRecord, SyncState
from trackport.transfer.target_records import claim_records, records_belong


def source_key(source: StoreDescription) -> str:
    """Which source a target's sync records belong to: its identity where it has one."""
    text = f"{source.kind}:{source.identity or source.uri}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sync(
    source: SourceStore,
    sink: SinkStore,
    selection: Selection = Selection(include_deleted=True),
    *,
    options: SyncOptions = SyncOptions(),
    config: TransferConfig = DEFAULT,
    renames: Renames = Renames(),
    on_progress: ProgressCallback | None = None,
    plan: Plan | None = None,
) -> Summary:
    """Bring the target up to date with the source's selection; Summary.sync counts the
    runs new, updated, unchanged, in conflict and gone. With include_deleted (the default)
    runs deleted or purged at the source are deleted in the target; without it, they are
    not selected and their copies are left as they are."""
    if not isinstance(sink, RunPatcher):
        raise BadInputError(
            f"{sink.describe().uri}: cannot be synced into (a {sink.describe().kind} cannot change a run in place);"
            " sync into a tracking server or a local sqlite store, or back up with export --since-bundle"
        )
    plan = plan or plan_transfer(source, selection, renames)
    notice = claim_records(sink.state_dir(), sink.describe())  # before the records are read
    state = SyncState(sink.state_dir(), source_key(source.describe()))
    try:
        renamed = _rename_experiments(plan, state, sink)
        units = SyncRunUnits(state, sink.target_reader(), options, follows_deletions=not plan.selection.narrows_runs)
        summary = transfer(source, sink, selection, config=config, on_progress=on_progress, plan=plan, run_units=units)
        _record_experiments(plan, state, sink)
        state.compact()
    finally:
        state.close()
    summary.notices[:0] = ([notice] if notice else []) + renamed
    summary.sync = {action: units.actions.get(action, 0) for action in ("new", "updated", "unchanged", "conflicts", "gone")}
    return summary


def _taken(plan: Plan) -> list[Experiment]:
    return [p.unit for p in plan.experiments if isinstance(p.unit, Experiment) and not p.not_selected]


def _rename_experiments(plan: Plan, state: SyncState, sink: RunPatcher) -> list[str]:
    """Experiments renamed at the source (or given another --rename) since the last sync
    take the new name in the target too; a notice for each."""
    notices = []
    for experiment in _taken(plan):
        record = state.experiments.get(experiment.experiment_id)
        wanted = plan.renames.experiment(experiment.name)
        if record is not None and record.name != wanted:
            sink.rename_experiment(record.target_experiment_id, wanted)
            state.record_experiment(ExperimentRecord(experiment.experiment_id, record.target_experiment_id, wanted))
            notices.append(f"experiment {record.name!r} renamed to {wanted!r} in the target, as at the source")
    return notices


def _record_experiments(plan: Plan, state: SyncState, sink: SinkStore) -> None:
    idmap = IdMap(sink.state_dir())
    try:
        for experiment in _taken(plan):
            target_id = idmap.get("experiment", experiment.experiment_id)
            if target_id is not None:
                state.record_experiment(
                    ExperimentRecord(experiment.experiment_id, target_id, plan.renames.experiment(experiment.name))
                )
    finally:
        idmap.close()


# -- the dry run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedChange:
    """What a sync would do with one run (or experiment)."""

    experiment: str  # the source experiment's name
    kind: str  # "run" | "experiment"
    source_id: str
    name: str
    action: str  # "new" | "update" | "unchanged" | "conflict" | "gone" | "rename"
    detail: str = ""  # what differs, or why


def dry_run(
    source: SourceStore,
    reader: SourceStore,
    target: StoreDescription,
    state_dir,
    selection: Selection = Selection(include_deleted=True),
    *,
    options: SyncOptions = SyncOptions(),
    renames: Renames = Renames(),
):
    """What sync would change, run by run, from reading both stores: nothing is written.
    reader: the target opened as a source."""
    plan = plan_transfer(source, selection, renames)
    key = source_key(source.describe())
    state = SyncState(state_dir, key) if records_belong(state_dir, target) else SyncState(state_dir, key + "-none")
    index = TargetIndex(reader)
    for experiment in _taken(plan):
        wanted = plan.renames.experiment(experiment.name)
        record = state.experiments.get(experiment.experiment_id)
        target_id = record.target_experiment_id if record else _experiment_named(reader, wanted)
        if record is not None and record.name != wanted:
            yield PlannedChange(experiment.name, "experiment", experiment.experiment_id, wanted, "rename", f"from {record.name!r}")
        copies = _copies(index, target_id) if target_id else {}
        seen = set()
        for run in runs_of(source, experiment, plan.selection):
            if isinstance(run, Unreadable):
                yield PlannedChange(experiment.name, "run", run.source_id, "", "unreadable", run.reason)
                continue
            seen.add(run.run_id)
            copy = copies.get(run.run_id)
            source_fp, _ = source_fingerprint(source, run)
            held = index.get(target_id, copy.run_id) if copy is not None else None
            decision = decide(state.run(run.run_id), copy.run_id if copy else None, run, source_fp, held[1] if held else None, options)
            action, detail = decision.action, ", ".join(decision.parts) or decision.reason
            if action == "compare" or (action == "conflict" and options.on_conflict == "source"):
                parts = run_difference(source, run, reader, copy, clamps_infinity=False).parts
                action, detail = ("update", ", ".join(parts)) if parts else ("unchanged", "equal to the source")
            yield PlannedChange(experiment.name, "run", run.run_id, run.run_name, action, detail)
        if not plan.selection.narrows_runs:
            for gone in sorted(set(r.source_run_id for r in state.runs.values() if r.source_experiment_id == experiment.experiment_id) - seen):
                yield PlannedChange(experiment.name, "run", gone, state.runs[gone].name, "gone", "its copy would be marked deleted")


def _experiment_named(reader: SourceStore, name: str) -> str | None:
    try:
        for found in reader.list_experiments(Selection(experiments=(f"name:{name}",), include_deleted=True)):
            if isinstance(found, Experiment) and found.name == name:
                return found.experiment_id
    except BadInputError:  # the target holds no experiment of that name
        pass
    return None


def _copies(index: TargetIndex, target_experiment_id: str) -> dict[str, Run]:
    """The complete copies the target experiment holds, by source run id (a copy names its
    source run in a provenance tag; a store that keeps ids holds it under the same id)."""
    found = {}
    for run, _ in index.runs(target_experiment_id):
        source_id = run.tags.get(SOURCE_RUN_ID_TAG)
        if source_id is None:
            found[run.run_id] = run
        elif run.tags.get(COMPLETE_TAG):
            found.setdefault(source_id, run)
    return found

