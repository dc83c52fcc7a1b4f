"""The transfer engine: export, import and copy are all `transfer(source, sink)`.

selection → planned experiments (each taken, or left out with the reason) → each
experiment's runs, parents before children, on a bounded worker pool (transfer/runs.py) →
id map and ledger at the sink → the summary. Every experiment and run the source holds
under the selection ends as done, skipped, failed or not selected; a fatal error stops the
transfer with the summary of what was done attached to it.
"""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

from trackport.domain import DEFAULT_WORKERS, DELETED, Experiment, Run, TargetExperimentId
from trackport.errors import BadInputError, FatalError, TrackportError, reason as _reason
from trackport.stores.base import Selection, SinkStore, SourceStore, Unreadable
from trackport.transfer.idmap import IdMap
from trackport.transfer.ledger import Ledger
from trackport.transfer.plan import planned_losses
from trackport.transfer.runs import DELETED_REASON, IN_DELETED_EXPERIMENT, move_runs
from trackport.transfer.summary import Failure, Summary
from trackport.transfer.target_records import claim_records

@dataclass(frozen=True)
class ProgressEvent:
    kind: str  # "experiment" | "run"
    source_id: str
    name: str
    outcome: str  # "done" | "skipped" | "failed" | "not_selected"
    summary: Summary


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class PlannedExperiment:
    unit: Experiment | Unreadable
    not_selected: str | None = None  # why it is left out (its runs are, too)


def plan_experiments(source: SourceStore, selection: Selection) -> list[PlannedExperiment]:
    """The experiments the selection covers, each taken or left out with the reason;
    refuses (before anything is written) a selection that takes nothing, so an empty store
    or a typo never produces an empty target."""
    where = source.describe().uri
    if selection.filter and not source.supports_filter:
        raise BadInputError(
            f"{where}: --filter needs a source that can search runs (a tracking server or sqlite store)"
        )
    planned = []
    for unit in source.list_experiments(dataclasses.replace(selection, include_deleted=True)):
        deleted = isinstance(unit, Experiment) and unit.lifecycle_stage == DELETED
        planned.append(PlannedExperiment(unit, DELETED_REASON if deleted and not selection.include_deleted else None))
    if not planned:
        raise BadInputError(f"{where}: no experiment matches the selection; check --experiment / --run-id")
    taken = [p.unit for p in planned if p.not_selected is None]
    if not taken:
        names = ", ".join(repr(p.unit.name) for p in planned[:5])
        raise BadInputError(f"{where}: the selected experiments are deleted ({names}); add --include-deleted")
    if not selection.experiments and not any(
        isinstance(e, Unreadable) or next(iter(source.iter_runs(e, selection)), None) for e in taken
    ):
        raise BadInputError(
            f"{where}: the store holds no runs to transfer"
            + ("" if selection.include_deleted else " (add --include-deleted for deleted ones)")
        )
    return planned


def transfer(
    source: SourceStore,
    sink: SinkStore,
    selection: Selection = Selection(),
    *,
    workers: int = DEFAULT_WORKERS,
    on_progress: ProgressCallback | None = None,
    experiments: list[PlannedExperiment] | None = None,
) -> Summary:
    """Move the selection from source to sink and return what happened.

    Fatal errors (FatalError) propagate at once, with `.summary` holding what was done; a
    unit that fails is recorded in the summary and the ledger, and the rest goes on.
    Re-running the same transfer skips what the sink already holds complete.
    """
    started = time.monotonic()
    planned = plan_experiments(source, selection) if experiments is None else experiments
    source_description, target = source.describe(), sink.describe()
    if source_description.identity and source_description.identity == target.identity:
        raise BadInputError(f"{target.uri} is the source itself ({source_description.uri}); give another target")
    state_dir = sink.state_dir()
    notice = claim_records(state_dir, target)
    sink.begin(source_description, selection)
    run = _Transfer(source, sink, selection, IdMap(state_dir), Ledger(state_dir), workers, on_progress)
    if notice:
        run.summary.notices.append(notice)
    run.summary.planned_losses = planned_losses(sink.capabilities, sink.on_long_value)
    run.ledger.started(
        {"kind": source_description.kind, "uri": source_description.uri},
        selection.to_json(),
        [p.unit.source_id if isinstance(p.unit, Unreadable) else p.unit.experiment_id for p in planned],
    )
    try:
        for experiment in planned:
            run.move_experiment(experiment)
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


class _Transfer:
    def __init__(
        self,
        source: SourceStore,
        sink: SinkStore,
        selection: Selection,
        idmap: IdMap,
        ledger: Ledger,
        workers: int,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.selection = selection
        self.everything = dataclasses.replace(selection, include_deleted=True)
        self.idmap = idmap
        self.ledger = ledger
        self.summary = Summary()
        self.on_progress = on_progress
        self.workers = max(1, workers)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="trackport")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.idmap.close()
        self.ledger.close()

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

    def report(self, kind: str, source_id: str, name: str, outcome: str) -> None:
        if self.on_progress:
            self.on_progress(ProgressEvent(kind, source_id, name, outcome, self.summary))

    # -- recording outcomes ------------------------------------------------------------

    def record_failure(self, kind: str, source_id: str, name: str, reason: str) -> None:
        self.summary.fail(Failure(kind, source_id, name, reason))
        self.ledger.record(kind, source_id, name, "failed", reason)
        self.report(kind, source_id, name, "failed")

    def record_unreadable(self, unit: Unreadable) -> None:
        self.record_failure(unit.kind, unit.source_id, "", unit.reason)

    def record_not_selected(self, kind: str, source_id: str, name: str, reason: str) -> None:
        self.summary.leave_out(kind, reason)
        self.ledger.record(kind, source_id, name, "not_selected", reason)
        self.report(kind, source_id, name, "not_selected")

    # -- experiments -------------------------------------------------------------------

    def move_experiment(self, planned: PlannedExperiment) -> None:
        experiment = planned.unit
        if isinstance(experiment, Unreadable):
            self.record_unreadable(experiment)
            return
        exp_id, name = experiment.experiment_id, experiment.name
        if planned.not_selected:
            problem = self._each_run(
                experiment, lambda run: self.record_not_selected("run", run.run_id, run.run_name, IN_DELETED_EXPERIMENT)
            )
            if problem:
                self.record_failure("experiment", exp_id, name, f"deleted, and {problem}")
            else:
                self.record_not_selected("experiment", exp_id, name, planned.not_selected)
            return
        try:
            written = self.sink.put_experiment(experiment)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, reported, counted
            reason = _reason(exc)
            problem = self._each_run(
                experiment,
                lambda run: self.record_failure("run", run.run_id, run.run_name, f"its experiment could not be written: {reason}"),
            )
            self.record_failure("experiment", exp_id, name, reason + (f"; and {problem}" if problem else ""))
            return
        target = written.target_experiment_id
        self.idmap.add_experiment(exp_id, target)
        problem = move_runs(self, experiment, target)
        if problem is None:
            problem = self._finish_experiment(experiment, target)
        if problem:
            self.record_failure("experiment", exp_id, name, problem)
            return
        outcome = "done" if written.created else "skipped"
        self.summary.add("experiments", outcome)
        self.ledger.record("experiment", exp_id, name, outcome, None if written.created else "already in the target")
        self.report("experiment", exp_id, name, outcome)

    def _finish_experiment(self, experiment: Experiment, target: TargetExperimentId) -> str | None:
        try:
            self.sink.finish_experiment(experiment, target)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded as the experiment's failure
            return f"its runs were written, but it could not be finished: {_reason(exc)}"
        return None

    def _each_run(self, experiment: Experiment, record: Callable[[Run], None]) -> str | None:
        """Record every run of an experiment that is not moved; the reason the listing
        broke off, if it did (the runs not reached stay unrecorded: still to do)."""
        try:
            for run in self.iter_runs(experiment):
                if isinstance(run, Unreadable):
                    self.record_unreadable(run)
                else:
                    record(run)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded as the experiment's failure
            return f"its runs could not all be listed: {_reason(exc)}"
        return None

    def iter_runs(self, experiment: Experiment) -> Iterator[Run | Unreadable]:
        """Every run of the experiment, deleted ones too: those the selection leaves out
        are counted as not selected, with the reason."""
        return self.source.iter_runs(experiment, self.everything)
