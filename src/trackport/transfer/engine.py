"""The transfer engine: export, import and copy are all `transfer(source, sink)`.

selection → planned experiments (each taken, or left out with the reason) → each
experiment's units, kind by kind in dependency order (transfer/units.py), each unit after
the units it depends on, on a bounded worker pool (transfer/scheduler.py) → id map and
ledger at the sink → the summary. Every unit the source holds under the selection ends as
done, skipped, failed or not selected; a fatal error stops the transfer with the summary
of what was done attached to it, and an exception that is none of trackport's kinds (a
bug) stops it as an InternalError naming the unit.

The engine knows kinds only through trackport.kinds and their unit types: a new kind is a
registration and adapter methods, not a change here.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from trackport.config import DEFAULT, TransferConfig
from trackport.domain import DELETED, Experiment, TargetExperimentId
from trackport.errors import BadInputError, FatalError, InternalError, TrackportError, reason as _reason, storage_error
from trackport.renames import Renames
from trackport.stores.base import Selection, SinkStore, SourceStore, Unreadable
from trackport.transfer.idmap import IdMap
from trackport.transfer.ledger import Ledger
from trackport.selection import select_workspace_units, takes_registry
from trackport.transfer.plan import (
    DELETED_REASON, IN_DELETED_EXPERIMENT, Plan, PlannedExperiment, declared_losses, not_read_by_source, plan_transfer,
)
from trackport.transfer.renamed_units import experiment_as_written, target_experiment_note, with_renamed_models
from trackport.transfer.scheduler import ExperimentUnits
from trackport.transfer.summary import Failure, Summary
from trackport.transfer.target_records import claim_records
from trackport.transfer.units import Moved, RunUnits, UnitType, unit_types, workspace_unit_types

@dataclass(frozen=True)
class ProgressEvent:
    kind: str  # a unit kind's name: "experiment", "run", ...
    source_id: str
    name: str
    outcome: str  # "done" | "skipped" | "failed" | "not_selected"
    summary: Summary
    # Units planned so far, per kind name (absent: not known yet). Experiments are known
    # from the start; the others as each experiment's listing is read.
    planned: dict[str, int | None] = dataclasses.field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def transfer(
    source: SourceStore,
    sink: SinkStore,
    selection: Selection = Selection(),
    *,
    config: TransferConfig = DEFAULT,
    on_progress: ProgressCallback | None = None,
    plan: Plan | None = None,
    renames: Renames = Renames(),
    run_units: RunUnits | None = None,
) -> Summary:
    """Move the selection from source to sink and return what happened.

    Fatal errors (FatalError) propagate at once, with `.summary` holding what was done; a
    unit that fails is recorded in the summary and the ledger, and the rest goes on.
    Re-running the same transfer skips what the sink already holds complete. plan: what
    plan_transfer(source, selection, renames) gave, where the caller planned before opening the
    sink. renames: the names experiments take in the target (with a plan, the plan's).
    run_units: how runs are moved, where not as RunUnits does (a sync, an incremental export).
    """
    started = time.monotonic()
    plan = plan or plan_transfer(source, selection, renames)
    selection, planned = plan.selection, plan.experiments
    source_description, target = source.describe(), sink.describe()
    if source_description.identity and source_description.identity == target.identity:
        raise BadInputError(f"{target.uri} is the source itself ({source_description.uri}); give another target")
    state_dir = sink.state_dir()
    notice = claim_records(state_dir, target)
    sink.begin(source_description, selection)
    run = _Transfer(source, sink, selection, IdMap(state_dir), Ledger(state_dir), config, on_progress, plan.renames, run_units)
    run.planned["experiment"] = len(planned)
    run.count_runs_up_front([p.unit for p in planned if isinstance(p.unit, Experiment)])
    if notice:
        run.summary.notices.append(notice)
    run.summary.notices.extend(sink.notices)
    unknown = sorted(set(getattr(source, "unit_kinds", list)()) - set(run._types) - {"experiment"})
    if unknown:
        run.summary.notices.append(
            f"the source holds units of kinds this trackport does not know ({', '.join(unknown)}); they are not moved"
        )
    run.summary.planned_losses = declared_losses(source, sink) + not_read_by_source(source) + target_experiment_note(plan.renames)
    run.ledger.started(
        {"kind": source_description.kind, "uri": source_description.uri},
        selection.to_json(),
        [p.unit.source_id if isinstance(p.unit, Unreadable) else p.unit.experiment_id for p in planned],
    )
    try:
        for experiment in planned:
            run.move_experiment(experiment)
        run.move_workspace()
        run.idmap.compact()
        run.ledger.ended("finished", run.summary.counts)
        sink.finish(run.summary.counts)
    except BaseException as exc:
        run.stopped(exc)
        raise
    finally:
        run.close()
        run.summary.elapsed_seconds = time.monotonic() - started
    return run.summary


def _then_raise(items: list, exc: Exception):
    """The items a listing gave before it broke off, then its error again."""
    yield from items
    raise exc


class _Transfer:
    def __init__(
        self,
        source: SourceStore,
        sink: SinkStore,
        selection: Selection,
        idmap: IdMap,
        ledger: Ledger,
        config: TransferConfig,
        on_progress: ProgressCallback | None,
        renames: Renames,
        run_units: RunUnits | None = None,
    ) -> None:
        self.source = source
        self.renames = renames
        self.sink = sink
        self.selection = selection
        self.everything = dataclasses.replace(selection, include_deleted=True)
        self.idmap = idmap
        self.ledger = ledger
        self.summary = Summary()
        self.on_progress = on_progress
        self.config = config
        self.types = with_renamed_models(unit_types(run_units), renames)
        self.workspace_types = with_renamed_models(workspace_unit_types(), renames)
        self._types = {t.kind.name: t for t in self.types + self.workspace_types}
        self.failed: set[tuple[str, str]] = set()  # units failed in this transfer: their dependents fail too
        self.planned: dict[str, int | None] = {}
        self.counted_up_front: set[str] = set()
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="trackport")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.idmap.close()
        self.ledger.close()

    def unit_type(self, kind: str) -> UnitType:
        return self._types[kind]

    def stopped(self, exc: BaseException) -> None:
        """A fatal error or an interruption ends the transfer: say so in the transfer log
        (if it can still be written) and hand the summary to whoever shows the error."""
        if isinstance(exc, TrackportError):
            exc.summary = self.summary  # type: ignore[attr-defined]
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _reason(exc)
        try:
            self.ledger.ended("stopped", self.summary.counts, reason)
        except TrackportError:
            pass  # the disk that stopped the transfer refuses this line too; the error says it

    def unit_failure(self, exc: Exception, kind: str, source_id: str) -> str:
        """Why a unit failed, when exc is a unit's failure (one of trackport's errors, or
        the OS refusing one file); a fatal error, a full or read-only disk, and anything
        else (a bug) are raised to stop the transfer."""
        if isinstance(exc, FatalError):
            raise exc
        if isinstance(exc, OSError):
            fatal = storage_error(exc, exc.filename or f"{kind} {source_id}")
            if fatal:
                raise fatal from exc
        elif not isinstance(exc, TrackportError):
            raise InternalError(f"internal error in {kind} {source_id}: {_reason(exc)}", kind, source_id) from exc
        return _reason(exc)

    def report(self, kind: str, source_id: str, name: str, outcome: str) -> None:
        if self.on_progress:
            self.on_progress(ProgressEvent(kind, source_id, name, outcome, self.summary, dict(self.planned)))

    def count_planned(self, kind: str, n: int = 1) -> None:
        if kind not in self.counted_up_front:
            self.planned[kind] = (self.planned.get(kind) or 0) + n

    def count_runs_up_front(self, experiments: list[Experiment]) -> None:
        """Progress totals: the runs every experiment holds, where the source can count
        them without listing; else the total grows as each experiment is listed."""
        if self.selection.filters_runs:
            return
        try:
            counts = [self.source.count_runs(e, self.everything) for e in experiments]
        except Exception:  # noqa: BLE001 - totals only draw progress; the listing meets the error
            return
        if None not in counts:
            self.planned["run"] = sum(counts)
            self.counted_up_front.add("run")

    # -- recording outcomes ------------------------------------------------------------

    def record_failure(self, kind: str, source_id: str, name: str, reason: str) -> None:
        self.failed.add((kind, source_id))
        self.summary.fail(Failure(kind, source_id, name, reason))
        self.ledger.record(kind, source_id, name, "failed", reason)
        self.report(kind, source_id, name, "failed")

    def record_unreadable(self, unit: Unreadable) -> None:
        self.record_failure(unit.kind, unit.source_id, unit.name, unit.reason)

    def record_not_selected(self, kind: str, source_id: str, name: str, reason: str) -> None:
        self.summary.leave_out(kind, reason)
        self.ledger.record(kind, source_id, name, "not_selected", reason)
        self.report(kind, source_id, name, "not_selected")

    def record_moved(self, kind: str, source_id: str, name: str, moved: Moved) -> None:
        self.idmap.add(kind, source_id, moved.target_id)
        self.summary.unit(kind, moved.outcome)
        for measure, amount in moved.amounts.items():
            self.summary.add(measure, moved.outcome, amount)
        for loss in moved.losses:
            self.summary.lost(f"{kind} {name!r} ({source_id}): {loss}" if name else f"{kind} {source_id}: {loss}")
        if moved.missing_artifact_folder:
            self.summary.no_artifact_folder(moved.missing_artifact_folder)
        self.ledger.record(kind, source_id, name, moved.outcome, moved.reason, losses=moved.losses, notes=moved.notes, **moved.amounts)
        self.report(kind, source_id, name, moved.outcome)

    # -- experiments -------------------------------------------------------------------

    def move_experiment(self, planned: PlannedExperiment) -> None:
        experiment = planned.unit
        if isinstance(experiment, Unreadable):
            self.record_unreadable(experiment)
            return
        exp_id, name = experiment.experiment_id, experiment.name
        if planned.not_selected:
            problem = self._each_unit(experiment, lambda k, i, n: self.record_not_selected(k, i, n, IN_DELETED_EXPERIMENT))
            if problem:
                self.record_failure("experiment", exp_id, name, f"deleted, and {problem}")
            else:
                self.record_not_selected("experiment", exp_id, name, planned.not_selected)
            return
        runs = self._runs_if_needed(experiment)
        if runs is None:
            return
        try:
            as_written = experiment_as_written(self.renames, experiment)
            written = self.sink.put_experiment(as_written)
        except Exception as exc:  # noqa: BLE001 - recorded, reported, counted
            reason = self.unit_failure(exc, "experiment", exp_id)
            problem = self._each_unit(
                experiment,
                lambda k, i, n: self.record_failure(k, i, n, f"its experiment could not be written: {reason}"),
                runs,
            )
            self.record_failure("experiment", exp_id, name, reason + (f"; and {problem}" if problem else ""))
            return
        target = written.target_experiment_id
        self.idmap.add("experiment", exp_id, target)
        scope = ExperimentUnits(self, experiment, target)
        problem = None
        for unit_type in self.types:
            problem = problem or self._move_kind(scope, unit_type, runs if unit_type.kind.name == "run" else None)
        if problem is None:
            problem = self._finish_experiment(as_written, target)
        if problem:
            self.record_failure("experiment", exp_id, name, problem)
            return
        outcome = "done" if written.created else "skipped"
        self.summary.unit("experiment", outcome)
        self.ledger.record("experiment", exp_id, name, outcome, None if written.created else "already in the target")
        self.report("experiment", exp_id, name, outcome)

    def move_workspace(self) -> None:
        """The units of the whole workspace (the kinds of scope "workspace"), after every
        experiment, so that the runs they refer to are settled."""
        if not takes_registry(self.selection):
            return
        scope = ExperimentUnits(self, None, None)
        for unit_type in self.workspace_types:
            listing = unit_type.listing(self.source, None, self.everything)
            if listing is None:
                continue  # the source holds no units of this kind
            problem = self._move_kind(scope, unit_type, select_workspace_units(unit_type.kind, listing, self.selection))
            if problem:
                self.record_failure(unit_type.kind.name, "", f"the workspace's {unit_type.kind.plural}", problem)

    def _move_kind(self, scope: ExperimentUnits, unit_type: UnitType, listing=None) -> str | None:
        if listing is None:
            listing = unit_type.listing(self.source, scope.experiment, self.everything)
            if listing is None:
                return None  # the source holds no units of this kind
            if self.selection.narrows_runs:
                listing = self._with_their_runs(scope, unit_type, listing)
        if not unit_type.holds(self.sink):
            return self._each_of(unit_type, listing, self._cannot_hold(unit_type))
        return scope.move(unit_type, self._counted(unit_type, listing))

    @staticmethod
    def _with_their_runs(scope: ExperimentUnits, unit_type: UnitType, listing):
        """When the selection takes some of an experiment's runs, the units of another kind
        that belong to a run (a logged model to its source run) are taken with their run;
        those that belong to none are not taken."""
        for item in listing:
            anchor = None if isinstance(item, Unreadable) else unit_type.anchor(item)
            if isinstance(item, Unreadable) or (anchor is not None and (anchor in scope.settled or anchor in scope.outside)):
                yield item

    def _cannot_hold(self, unit_type: UnitType):
        reason = f"the target cannot hold {unit_type.kind.plural}"
        return lambda kind, source_id, name: self.record_moved(kind, source_id, name, Moved("", "skipped", reason))

    def _counted(self, unit_type: UnitType, listing):
        for item in listing:
            self.count_planned(unit_type.kind.name)
            yield item

    def _runs_if_needed(self, experiment: Experiment):
        """The experiment's run listing; None when a selection that picks runs (--filter,
        --run-id) picks none in it: the experiment is then not selected, and not written,
        since no selected unit needs it."""
        runs = self.unit_type("run").listing(self.source, experiment, self.everything)
        if not self.selection.narrows_runs:
            return runs
        held = []
        try:
            for item in runs:
                held.append(item)
                if isinstance(item, Unreadable) or self.selection.include_deleted or item.lifecycle_stage != DELETED:
                    return itertools.chain(held, runs)
        except Exception as exc:  # noqa: BLE001 - raised again where listings are recorded
            return _then_raise(held, exc)
        for run in held:
            self.record_not_selected("run", run.run_id, run.run_name, DELETED_REASON)
        reason = "no run in it matches the filter" if self.selection.filters_runs else "none of the selected runs is in it"
        self.record_not_selected("experiment", experiment.experiment_id, experiment.name, reason)
        return None

    def _finish_experiment(self, experiment: Experiment, target: TargetExperimentId) -> str | None:
        try:
            self.sink.finish_experiment(experiment, target)
        except Exception as exc:  # noqa: BLE001 - recorded as the experiment's failure
            return f"its units were written, but it could not be finished: {self.unit_failure(exc, 'experiment', experiment.experiment_id)}"
        return None

    def _each_unit(self, experiment: Experiment, record: Callable[[str, str, str], None], runs=None) -> str | None:
        """Record every unit of an experiment that is not moved; the reason a listing
        broke off, if one did (the units not reached stay unrecorded: still to do)."""
        for unit_type in self.types:
            listing = runs if runs is not None and unit_type.kind.name == "run" else unit_type.listing(self.source, experiment, self.everything)
            if listing is not None:
                problem = self._each_of(unit_type, listing, record)
                if problem:
                    return problem
        return None

    def _each_of(self, unit_type: UnitType, listing, record: Callable[[str, str, str], None]) -> str | None:
        try:
            for item in self._counted(unit_type, listing):
                if isinstance(item, Unreadable):
                    self.record_unreadable(item)
                else:
                    record(unit_type.kind.name, unit_type.source_id(item), unit_type.name(item))
        except Exception as exc:  # noqa: BLE001 - recorded as the experiment's failure
            return f"its {unit_type.kind.plural} could not all be listed: {self.unit_failure(exc, unit_type.kind.name, '')}"
        return None
