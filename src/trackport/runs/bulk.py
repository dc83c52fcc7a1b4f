"""Deleting and restoring runs of one experiment in bulk, by time: which runs, in which
order, up to which cap, and what became of each. Never prints; trackport.cli.runs renders.

Delete (`runs delete --created-before TIME`): the active runs created (started) at or
before TIME and, unless children are left out, every active run descending from a run
created at or before TIME, whenever it was created and whether that ancestor is active or
was deleted earlier. So afterwards no active run of the experiment was created at or
before TIME or descends from one that was, and a run cut off by the cap is taken by the
next call. Runs come oldest first (start time, then id), each followed by its
descendants; the cap counts every run deleted, descendants included.

Restore (`runs restore --deleted-after TIME`): the deleted runs whose deletion time is at
or after TIME, oldest first, up to the cap. Where the store does not keep deletion times
(a server's REST API), the times are those trackport recorded when it deleted them; a
deleted run without a known time is skipped and said, or restored with include_unknown.

A plan is a dry run's result: what would change (PLANNED) and what would be skipped, why.
apply() carries a plan out and says what became of every run in it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Mapping

from trackport.domain import ACTIVE, DELETED, Experiment
from trackport.editing import DONE, FAILED, SKIPPED, RunChange, RunEditor
from trackport.errors import BadInputError
from trackport.stores.base import Selection, SourceStore, Unreadable

MAX_RUNS = 10_000  # the most a call takes, as Databricks' bulk endpoints
PLANNED = "planned"  # a dry run's: would be changed
OUTCOMES = (PLANNED, DONE, SKIPPED, FAILED)
DELETE, RESTORE = "delete", "restore"


@dataclass(frozen=True)
class RunRef:
    """What choosing a run needs of it."""

    run_id: str
    run_name: str
    start_time: int | None
    lifecycle_stage: str
    parent_run_id: str | None
    deleted_time: int | None  # when it was deleted, where the store or trackport's record knows


@dataclass(frozen=True)
class RunOutcome:
    run: RunRef
    outcome: str  # one of OUTCOMES
    reason: str | None = None  # why skipped or failed
    via: str | None = None  # delete: the run created at or before the time it descends from

    def to_json(self) -> dict:
        return {
            "run_id": self.run.run_id, "run_name": self.run.run_name, "start_time": self.run.start_time,
            "deleted_time": self.run.deleted_time, "outcome": self.outcome, "reason": self.reason, "via": self.via,
        }


@dataclass(frozen=True)
class BulkResult:
    """A plan (dry_run) or what apply() did: one outcome per run the command touches."""

    action: str  # DELETE | RESTORE
    store: str
    experiment: Experiment
    time: int  # created_before for DELETE, deleted_after for RESTORE
    max_runs: int
    outcomes: tuple[RunOutcome, ...]
    dry_run: bool = True
    children: bool = True  # DELETE: descendants too
    include_unknown: bool = False  # RESTORE: runs without a known deletion time too
    bulk_endpoint: bool = False  # the store's own bulk call did the work (Databricks)

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    @property
    def capped(self) -> bool:
        """Whether the cap left runs for another call."""
        over = over_cap_reason(self.action, self.max_runs)
        return any(o.reason == over for o in self.outcomes)

    def to_json(self) -> dict:
        bound = "created_before" if self.action == DELETE else "deleted_after"
        return {
            "action": self.action, "store": self.store, bound: self.time, "max_runs": self.max_runs,
            "experiment": {"id": self.experiment.experiment_id, "name": self.experiment.name},
            "dry_run": self.dry_run, "bulk_endpoint": self.bulk_endpoint,
            "counts": {o: self.count(o) for o in OUTCOMES},
            "runs": [o.to_json() for o in self.outcomes],
        }


def over_cap_reason(action: str, max_runs: int) -> str:
    return f"over --max-runs {max_runs}: run the same command again to {action} it"


def plan_delete(
    editor: RunEditor, experiment_ref: str, created_before: int, *, max_runs: int = MAX_RUNS, children: bool = True
) -> BulkResult:
    """What `runs delete` would delete (PLANNED) and leave for the next call (SKIPPED)."""
    source, experiment = _open(editor, experiment_ref, max_runs)
    runs = list(_run_refs(source, experiment, {}))
    below: dict[str, list[RunRef]] = {}
    for run in runs:
        if run.parent_run_id:
            below.setdefault(run.parent_run_id, []).append(run)
    chosen: dict[str, RunOutcome] = {}
    walked: set[str] = set()  # runs whose descendants are taken already
    for run in runs:
        if not _created_by(run, created_before):
            continue
        if run.lifecycle_stage == ACTIVE and run.run_id not in chosen:
            chosen[run.run_id] = RunOutcome(run, PLANNED)
        for descendant in _descendants(run, below, walked) if children else ():
            if descendant.lifecycle_stage == ACTIVE and descendant.run_id not in chosen:
                chosen[descendant.run_id] = RunOutcome(descendant, PLANNED, via=run.run_id)
    outcomes = _capped(list(chosen.values()), over_cap_reason(DELETE, max_runs), max_runs)
    return BulkResult(DELETE, editor.uri, experiment, created_before, max_runs, outcomes, children=children)


def plan_restore(
    editor: RunEditor, experiment_ref: str, deleted_after: int, *, max_runs: int = MAX_RUNS, include_unknown: bool = False
) -> BulkResult:
    """What `runs restore` would restore (PLANNED), and the deleted runs it would skip
    because their deletion time is unknown or they are over the cap."""
    source, experiment = _open(editor, experiment_ref, max_runs)
    if editor.knows_deletion_times:
        unknown = "deletion time unknown (the store did not record it); --include-unknown restores it too"
    else:
        unknown = "deletion time unknown (deleted outside trackport); --include-unknown restores it too"
    candidates: list[RunOutcome] = []
    skipped: list[RunOutcome] = []
    for run in _run_refs(source, experiment, editor.deletion_times(experiment.experiment_id)):
        if run.lifecycle_stage != DELETED:
            continue
        if run.deleted_time is None and not include_unknown:
            skipped.append(RunOutcome(run, SKIPPED, unknown))
        elif run.deleted_time is None or run.deleted_time >= deleted_after:
            candidates.append(RunOutcome(run, PLANNED))
    outcomes = _capped(candidates, over_cap_reason(RESTORE, max_runs), max_runs) + tuple(skipped)
    return BulkResult(RESTORE, editor.uri, experiment, deleted_after, max_runs, outcomes, include_unknown=include_unknown)


def apply(editor: RunEditor, plan: BulkResult) -> BulkResult:
    """Carry the plan out; every run of the plan comes back done, skipped or failed, with
    why. The store's own bulk call is used where it has one and does what the plan says."""
    experiment_id = plan.experiment.experiment_id
    planned = [o for o in plan.outcomes if o.outcome == PLANNED]
    ids = [o.run.run_id for o in planned]
    if not planned:
        return replace(plan, dry_run=False)
    if plan.action == DELETE:
        if editor.bulk_by_time() and not plan.capped:
            # The endpoint deletes the runs created by the time; descendants created after
            # it are not its business.
            by_time = [i for o, i in zip(planned, ids) if _created_by(o.run, plan.time)]
            later = [i for o, i in zip(planned, ids) if not _created_by(o.run, plan.time)]
            changes = editor.delete_created_before(experiment_id, plan.time, by_time) + editor.delete_runs(experiment_id, later)
            return _settled(plan, changes, bulk_endpoint=True)
        return _settled(plan, editor.delete_runs(experiment_id, ids))
    if editor.bulk_by_time():
        return _bulk_restored(editor, plan)
    return _settled(plan, editor.restore_runs(experiment_id, ids))


def _bulk_restored(editor: RunEditor, plan: BulkResult) -> BulkResult:
    """The server restores by its own deletion times, which it does not show: what it
    restored is what changed; runs it left deleted are said, and with include_unknown
    the unknown ones it left are restored one by one."""
    experiment_id = plan.experiment.experiment_id
    restored = {c.run_id for c in editor.restore_deleted_after(experiment_id, plan.time, plan.max_runs)}
    left = "the server's bulk restore left it deleted (deleted before the time by its clock, or over --max-runs)"
    outcomes = []
    for o in plan.outcomes:
        if o.run.run_id in restored:
            outcomes.append(replace(o, outcome=DONE, reason=None))
        else:
            outcomes.append(replace(o, outcome=SKIPPED, reason=left if o.outcome == PLANNED else o.reason))
    known = {o.run.run_id for o in plan.outcomes}
    for run in _run_refs(_source(editor), plan.experiment, {}):  # restored by the server's clock alone
        if run.run_id in restored and run.run_id not in known:
            outcomes.append(RunOutcome(run, DONE))
    result = replace(plan, outcomes=tuple(outcomes), dry_run=False, bulk_endpoint=True)
    if plan.include_unknown:
        unknown = [o.run.run_id for o in plan.outcomes if o.run.deleted_time is None and o.run.run_id not in restored]
        result = _settled(result, editor.restore_runs(experiment_id, unknown), pending=SKIPPED)
    return result


def _settled(plan: BulkResult, changes: list[RunChange], *, bulk_endpoint: bool | None = None, pending: str = PLANNED) -> BulkResult:
    """The plan with each of its `pending` runs as the store's change says."""
    by_id = {c.run_id: c for c in changes}
    outcomes = []
    for o in plan.outcomes:
        change = by_id.get(o.run.run_id) if o.outcome == pending else None
        if change is not None:
            o = replace(o, outcome=change.outcome, reason=change.reason)
        elif o.outcome == PLANNED:  # a store that says nothing of a run it was given: not silently done
            o = replace(o, outcome=FAILED, reason="the store did not say what became of it")
        outcomes.append(o)
    used = plan.bulk_endpoint if bulk_endpoint is None else bulk_endpoint
    return replace(plan, outcomes=tuple(outcomes), dry_run=False, bulk_endpoint=used)


def _open(editor: RunEditor, experiment_ref: str, max_runs: int) -> tuple[SourceStore, Experiment]:
    if not 1 <= max_runs <= MAX_RUNS:
        raise ValueError(f"max_runs must be between 1 and {MAX_RUNS}, not {max_runs}")
    source = _source(editor)
    found = next(iter(source.list_experiments(Selection(experiments=(experiment_ref,), include_deleted=True))))
    if isinstance(found, Unreadable):
        raise BadInputError(f"experiment {found.source_id} cannot be read ({found.reason}); nothing was changed")
    return source, found


def _source(editor: RunEditor) -> SourceStore:
    if not isinstance(editor, SourceStore):  # every editor reads through its store (trackport.editing)
        raise TypeError(f"{type(editor).__name__} is a RunEditor without its store's SourceStore")
    return editor


def _run_refs(source: SourceStore, experiment: Experiment, recorded: Mapping[str, int]) -> Iterator[RunRef]:
    """Every run of the experiment, deleted ones too, oldest first; a deleted run's time
    from the store, else from trackport's record."""
    for run in source.iter_runs(experiment, Selection(include_deleted=True)):
        if isinstance(run, Unreadable):
            raise BadInputError(
                f"run {run.source_id} of experiment {experiment.name!r} cannot be read ({run.reason}); nothing was changed"
            )
        deleted_time = run.deleted_time
        if deleted_time is None and run.lifecycle_stage == DELETED:
            deleted_time = recorded.get(run.run_id)
        yield RunRef(run.run_id, run.run_name, run.start_time, run.lifecycle_stage, run.parent_run_id, deleted_time)


def _created_by(run: RunRef, time: int) -> bool:
    return run.start_time is not None and run.start_time <= time


def _descendants(root: RunRef, below: dict[str, list[RunRef]], walked: set[str]) -> Iterator[RunRef]:
    """The runs under root, depth first, each level oldest first, leaving out the runs in
    walked (reached before, with everything under them) and adding the ones reached: each
    run is visited once, and a parent tag that loops back is followed once."""
    if root.run_id in walked:
        return
    walked.add(root.run_id)
    stack = list(reversed(below.get(root.run_id, ())))
    while stack:
        run = stack.pop()
        if run.run_id in walked:
            continue
        walked.add(run.run_id)
        yield run
        stack.extend(reversed(below.get(run.run_id, ())))


def _capped(chosen: list[RunOutcome], reason: str, max_runs: int) -> tuple[RunOutcome, ...]:
    return tuple(chosen[:max_runs]) + tuple(replace(o, outcome=SKIPPED, reason=reason) for o in chosen[max_runs:])
