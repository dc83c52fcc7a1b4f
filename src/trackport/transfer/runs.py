"""The runs of one experiment on the worker pool, parents before children.

A child waits until its parent is settled, on every kind of sink: a child whose parent
failed in this transfer (damaged, unreadable, refused by the target, or failed itself
because of its own parent) fails too, always the same way, and is retried with it next
time. A child whose parent is not part of the transfer (not selected, or not in the
source's selection at all) is moved with its parent link resolved against the target:
the copy of the parent the target holds, else the source id, recorded as a loss.

At most twice as many runs as workers are read ahead, so memory stays flat however many
runs an experiment holds (children waiting for a parent are held too).
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, BinaryIO, Iterator

import pyarrow as pa

from trackport.domain import (
    DELETED,
    PARENT_RUN_ID_TAG,
    ArtifactFile,
    Experiment,
    Run,
    SourceRunId,
    TargetExperimentId,
    TargetRunId,
)
from trackport.errors import FatalError, reason as _reason
from trackport.stores.base import SourceStore, Unreadable

if TYPE_CHECKING:
    from trackport.transfer.engine import _Transfer

DELETED_REASON = "deleted; add --include-deleted to take it"
IN_DELETED_EXPERIMENT = "its experiment is deleted; add --include-deleted to take it"


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


def move_runs(transfer: _Transfer, experiment: Experiment, target: TargetExperimentId) -> str | None:
    """Every run of the experiment; the reason its listing broke off, if it did."""
    return _ExperimentRuns(transfer, experiment, target).run()


class _ExperimentRuns:
    def __init__(self, transfer: _Transfer, experiment: Experiment, target: TargetExperimentId) -> None:
        self.t = transfer
        self.experiment = experiment
        self.target = target
        self.in_flight: dict[Future, Run] = {}
        self.waiting_for: dict[str, list[Run]] = {}  # parent id -> children
        self.settled: dict[str, bool] = {}  # run id -> moved (done or skipped), or failed
        self.outside: set[str] = set()  # runs listed but left out (their children go on)
        self.moved: dict[str, TargetRunId] = {}  # source id -> target id, this experiment

    def run(self) -> str | None:
        problem = None
        try:
            try:
                for item in self.t.iter_runs(self.experiment):
                    self._take(item)
                    while len(self.in_flight) >= 2 * self.t.workers:
                        self._settle_some()
            except FatalError:
                raise
            except Exception as exc:  # noqa: BLE001 - the listing broke off: recorded below
                problem = f"its runs could not all be listed: {_reason(exc)}"
            while self.in_flight or self.waiting_for:
                if self.in_flight:
                    self._settle_some()
                    continue
                # Parents that never came. With the whole listing read, they are not in
                # the selection: their children go on. Otherwise they may just not have
                # been reached: their children fail with them.
                for parent, children in list(self.waiting_for.items()):
                    del self.waiting_for[parent]
                    for child in children:
                        if problem:
                            self._fail_family(child, f"its parent run {parent} was not reached: {problem}")
                        else:
                            self._submit(child)
        except BaseException:
            for future in self.in_flight:
                future.cancel()
            raise
        return problem

    # -- scheduling (main thread) -------------------------------------------------------

    def _take(self, item: Run | Unreadable) -> None:
        if isinstance(item, Unreadable):
            self.t.record_unreadable(item)
            self._settle(item.source_id, False)
            return
        run = item
        if run.lifecycle_stage == DELETED and not self.t.selection.include_deleted:
            self.t.record_not_selected("run", run.run_id, run.run_name, DELETED_REASON)
            self.outside.add(run.run_id)
            for child in self.waiting_for.pop(run.run_id, []):
                self._release(child)
            return
        parent = run.parent_run_id
        if parent and parent not in self.settled and parent not in self.outside and self._in_target(parent) is None:
            self.waiting_for.setdefault(parent, []).append(run)
        else:
            self._release(run)

    def _release(self, run: Run) -> None:
        """Submit run, or fail it (and the children waiting for it) if its parent failed."""
        parent = run.parent_run_id
        if parent is not None and self.settled.get(parent) is False:
            self._fail_family(run, f"its parent run {parent} failed")
        else:
            self._submit(run)

    def _fail_family(self, run: Run, reason: str) -> None:
        pending = [(run, reason)]
        while pending:
            child, why = pending.pop()
            self._fail(child, why)
            self.settled[child.run_id] = False
            pending.extend((c, f"its parent run {child.run_id} failed") for c in self.waiting_for.pop(child.run_id, []))

    def _fail(self, run: Run, reason: str) -> None:
        self.t.record_failure("run", run.run_id, run.run_name, reason)

    def _submit(self, run: Run) -> None:
        self.in_flight[self.t.pool.submit(self._move, run)] = run

    def _settle_some(self) -> None:
        for future in wait(self.in_flight, return_when=FIRST_COMPLETED).done:
            run = self.in_flight.pop(future)
            self._settle(run.run_id, future.result())  # re-raises fatal errors

    def _settle(self, run_id: str, moved: bool) -> None:
        self.settled[run_id] = moved
        for child in self.waiting_for.pop(run_id, []):
            self._release(child)

    def _in_target(self, source_run_id: str) -> TargetRunId | None:
        try:
            return self.t.sink.lookup_run(SourceRunId(source_run_id), self.target)
        except FatalError:
            raise
        except Exception:  # noqa: BLE001 - not found for now: the child waits, asked again later
            return None

    # -- one run (worker thread) ----------------------------------------------------------

    def _move(self, run: Run) -> bool:
        """One run unit. False when it failed (already recorded)."""
        t = self.t
        try:
            remapped, losses = self._remap(run)
            existing = t.sink.find_run(remapped, self.target)
            if existing is not None:
                self.moved[run.run_id] = existing
                t.idmap.add_run(run.run_id, existing)
                t.summary.add("runs", "skipped")
                t.ledger.record("run", run.run_id, run.run_name, "skipped", "already complete in the target")
                t.report("run", run.run_id, run.run_name, "skipped")
                return True
            if not t.sink.capabilities.undoes_failed_runs:
                t.source.check_run(run)  # a damaged run is refused before anything of it is written
            missing = t.source.missing_artifact_folder(run)
            result = t.sink.put_run(remapped, self.target, _SourceRunContent(t.source, run))
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, reported, counted
            self._fail(run, _reason(exc))
            return False
        self.moved[run.run_id] = result.target_run_id
        t.idmap.add_run(run.run_id, result.target_run_id)
        losses += result.losses
        t.summary.add("runs", "done")
        t.summary.add("metric_points", "done", result.metric_points)
        t.summary.add("artifact_files", "done", result.artifact_files)
        t.summary.add("artifact_bytes", "done", result.artifact_bytes)
        for loss in losses:
            t.summary.lost(f"run {run.run_name!r} ({run.run_id}): {loss}")
        notes = []
        if missing:
            t.summary.no_artifact_folder(missing)
            notes.append(f"no artifact folder at {missing}")
        t.ledger.record(
            "run",
            run.run_id,
            run.run_name,
            "done",
            metric_points=result.metric_points,
            artifact_files=result.artifact_files,
            artifact_bytes=result.artifact_bytes,
            losses=losses,
            notes=notes,
        )
        t.report("run", run.run_id, run.run_name, "done")
        return True

    def _remap(self, run: Run) -> tuple[Run, list[str]]:
        """The run as the sink must write it: its parent link naming the parent's copy in
        the target (found in this transfer, else in the target itself)."""
        parent = run.parent_run_id
        if not parent:
            return run, []
        target_parent = self.moved.get(parent) or self._in_target(parent)
        if target_parent is None:
            return run, [f"parent run {parent} is not in the target; {PARENT_RUN_ID_TAG} keeps its source id"]
        if target_parent == parent:
            return run, []
        return dataclasses.replace(run, tags={**run.tags, PARENT_RUN_ID_TAG: target_parent}), []
