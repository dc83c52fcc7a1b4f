"""The transfer engine: export, import and copy are all `transfer(source, sink)`.

selection → units (each experiment, then its runs, parents before children) → a bounded
worker pool → id map persisted at the sink → a ledger line per unit → the summary.
"""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import pyarrow as pa

from trackport.domain import (
    DEFAULT_WORKERS,
    PARENT_RUN_ID_TAG,
    ArtifactFile,
    Experiment,
    Run,
    SourceRunId,
    TargetExperimentId,
)
from trackport.errors import BadInputError, FatalError, TrackportError
from trackport.stores.base import Selection, SinkStore, SourceStore, Unreadable
from trackport.transfer.idmap import IdMap
from trackport.transfer.ledger import Ledger
from trackport.transfer.plan import planned_losses
from trackport.transfer.summary import Failure, Summary


@dataclass(frozen=True)
class ProgressEvent:
    kind: str  # "experiment" | "run"
    source_id: str
    name: str
    outcome: str  # "done" | "skipped" | "failed"
    summary: Summary


ProgressCallback = Callable[[ProgressEvent], None]


class _SourceRunContent:
    """Lets a sink pull one run's metrics and artifacts from the source as it writes."""

    def __init__(self, source: SourceStore, run: Run) -> None:
        self._source = source
        self._run = run

    def metric_batches(self) -> Iterator[pa.RecordBatch]:
        return self._source.iter_metric_batches(self._run)

    def artifact_files(self) -> Iterator[ArtifactFile]:
        return self._source.list_artifacts(self._run)

    def open_artifact(self, path: str) -> AbstractContextManager[BinaryIO]:
        return self._source.open_artifact(self._run, path)


def plan_experiments(source: SourceStore, selection: Selection) -> list[Experiment | Unreadable]:
    """The experiments to move; refuses (before anything is written) a selection that
    matches nothing, so an empty store or a typo never produces an empty target."""
    where = source.describe().uri
    if selection.filter and not source.supports_filter:
        raise BadInputError(
            f"{where}: --filter needs a source that can search runs (a tracking server or sqlite store)"
        )
    experiments = list(source.list_experiments(selection))
    if not experiments:
        raise BadInputError(f"{where}: no experiment matches the selection; check --experiment / --run-id")
    if not selection.experiments and not any(
        isinstance(e, Unreadable) or next(iter(source.iter_runs(e, selection)), None) for e in experiments
    ):
        raise BadInputError(
            f"{where}: the store holds no runs to transfer"
            + ("" if selection.include_deleted else " (add --include-deleted for deleted ones)")
        )
    return experiments


def transfer(
    source: SourceStore,
    sink: SinkStore,
    selection: Selection = Selection(),
    *,
    workers: int = DEFAULT_WORKERS,
    on_progress: ProgressCallback | None = None,
    experiments: list[Experiment | Unreadable] | None = None,
) -> Summary:
    """Move the selection from source to sink and return what happened.

    Fatal errors (FatalError) propagate at once; a unit that fails is recorded in the
    summary and the ledger, and the rest goes on. Re-running the same transfer skips what
    the sink already holds complete.
    """
    started = time.monotonic()
    if experiments is None:
        experiments = plan_experiments(source, selection)
    sink.begin(source.describe(), selection)
    state_dir = sink.state_dir()
    run = _Transfer(source, sink, selection, IdMap(state_dir), Ledger(state_dir), workers, on_progress)
    run.summary.planned_losses = planned_losses(sink.capabilities, sink.on_long_value)
    try:
        for experiment in experiments:
            run.move_experiment(experiment)
        run.idmap.compact()
        sink.finish(run.summary.counts)
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
        self.idmap = idmap
        self.ledger = ledger
        self.summary = Summary()
        self.workers = max(1, workers)
        self.on_progress = on_progress
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="trackport")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.idmap.close()
        self.ledger.close()

    def _report(self, kind: str, source_id: str, name: str, outcome: str) -> None:
        if self.on_progress:
            self.on_progress(ProgressEvent(kind, source_id, name, outcome, self.summary))

    # -- experiments ---------------------------------------------------------------

    def move_experiment(self, experiment: Experiment | Unreadable) -> None:
        if isinstance(experiment, Unreadable):
            self._record_unreadable(experiment)
            return
        known = self.idmap.experiment(experiment.experiment_id)
        try:
            target_id = self.sink.put_experiment(experiment)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, reported, counted
            reason = _reason(exc)
            self.summary.fail(Failure("experiment", experiment.experiment_id, experiment.name, reason))
            self.ledger.record("experiment", experiment.experiment_id, experiment.name, "failed", reason)
            self._report("experiment", experiment.experiment_id, experiment.name, "failed")
            self._fail_runs_of(experiment, f"its experiment could not be written: {reason}")
            return
        self.idmap.add_experiment(experiment.experiment_id, target_id)
        outcome = "skipped" if known == target_id else "done"
        self.summary.add("experiments", outcome)
        self.ledger.record("experiment", experiment.experiment_id, experiment.name, outcome)
        self._report("experiment", experiment.experiment_id, experiment.name, outcome)
        self._move_runs(experiment, target_id)
        self.sink.finish_experiment(experiment, target_id)

    def _fail_runs_of(self, experiment: Experiment, reason: str) -> None:
        for run in self.source.iter_runs(experiment, self.selection):
            if isinstance(run, Unreadable):
                self._record_unreadable(run)
            else:
                self._record_run_failure(run, reason)

    def _record_unreadable(self, unit: Unreadable) -> None:
        self.summary.fail(Failure(unit.kind, unit.source_id, "", unit.reason))
        self.ledger.record(unit.kind, unit.source_id, "", "failed", unit.reason)
        self._report(unit.kind, unit.source_id, "", "failed")

    # -- runs ----------------------------------------------------------------------

    def _move_runs(self, experiment: Experiment, target_experiment: TargetExperimentId) -> None:
        """Runs go to the pool as soon as their parent is finished, at most 2× workers in
        flight so memory stays flat however many runs the experiment holds."""
        in_flight: dict[Future, Run] = {}
        waiting_for: dict[SourceRunId, list[Run]] = {}  # parent id -> children
        finished: set[SourceRunId] = set()
        failed: set[SourceRunId] = set()
        must_wait = not self.sink.capabilities.keeps_run_ids

        def submit(run: Run) -> None:
            in_flight[self.pool.submit(self._move_run, run, target_experiment)] = run

        def settle(done: set[Future]) -> None:
            for future in done:
                run = in_flight.pop(future)
                if not future.result():  # re-raises fatal errors
                    failed.add(run.run_id)
                finished.add(run.run_id)
                for child in waiting_for.pop(run.run_id, []):
                    release(child)

        def release(child: Run) -> None:
            if must_wait and child.parent_run_id in failed:
                self._record_run_failure(child, f"its parent run {child.parent_run_id} failed")
                failed.add(child.run_id)
                finished.add(child.run_id)
                for grandchild in waiting_for.pop(child.run_id, []):
                    release(grandchild)
            else:
                submit(child)

        try:
            for run in self.source.iter_runs(experiment, self.selection):
                if isinstance(run, Unreadable):
                    self._record_unreadable(run)
                    continue
                parent = run.parent_run_id
                if must_wait and parent and parent not in finished and self.idmap.run(parent) is None:
                    waiting_for.setdefault(parent, []).append(run)
                else:
                    release(run)
                while len(in_flight) >= 2 * self.workers:
                    settle(wait(in_flight, return_when=FIRST_COMPLETED).done)
            while in_flight or waiting_for:
                if not in_flight:
                    # Parents that never came are outside the selection: move the children
                    # with the parent tag as it stands (recorded as a loss by _remap).
                    for children in waiting_for.values():
                        for child in children:
                            submit(child)
                    waiting_for.clear()
                    continue
                settle(wait(in_flight, return_when=FIRST_COMPLETED).done)
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise

    def _record_run_failure(self, run: Run, reason: str) -> None:
        self.summary.fail(Failure("run", run.run_id, run.run_name, reason))
        self.ledger.record("run", run.run_id, run.run_name, "failed", reason)
        self._report("run", run.run_id, run.run_name, "failed")

    def _move_run(self, run: Run, target_experiment: TargetExperimentId) -> bool:
        """One run unit, in a worker thread. False when it failed (already recorded)."""
        try:
            remapped, losses = self._remap(run)
            existing = self.sink.find_run(remapped, target_experiment)
            if existing is not None:
                self.idmap.add_run(run.run_id, existing)
                self.summary.add("runs", "skipped")
                self.ledger.record("run", run.run_id, run.run_name, "skipped", "already complete in the target")
                self._report("run", run.run_id, run.run_name, "skipped")
                return True
            result = self.sink.put_run(remapped, target_experiment, _SourceRunContent(self.source, run))
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, reported, counted
            self._record_run_failure(run, _reason(exc))
            return False
        self.idmap.add_run(run.run_id, result.target_run_id)
        losses += result.losses
        self.summary.add("runs", "done")
        self.summary.add("metric_points", "done", result.metric_points)
        self.summary.add("artifact_files", "done", result.artifact_files)
        self.summary.add("artifact_bytes", "done", result.artifact_bytes)
        for loss in losses:
            self.summary.lost(f"run {run.run_name!r} ({run.run_id}): {loss}")
        self.ledger.record(
            "run",
            run.run_id,
            run.run_name,
            "done",
            metric_points=result.metric_points,
            artifact_files=result.artifact_files,
            artifact_bytes=result.artifact_bytes,
            losses=losses,
        )
        self._report("run", run.run_id, run.run_name, "done")
        return True

    def _remap(self, run: Run) -> tuple[Run, list[str]]:
        """The run as the sink must write it: parent link pointing at the parent's target id."""
        parent = run.parent_run_id
        if not parent or self.sink.capabilities.keeps_run_ids:
            return run, []
        target_parent = self.idmap.run(parent)
        if target_parent is None:
            return run, [f"parent run {parent} is not in the transfer; {PARENT_RUN_ID_TAG} keeps the source id"]
        return dataclasses.replace(run, tags={**run.tags, PARENT_RUN_ID_TAG: target_parent}), []


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TrackportError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
