"""How a sync moves runs: a new run is copied; a run the target holds is left alone when
neither it nor its copy changed since the last sync, else brought up to date in place; a
run gone from the source has its copy marked deleted. One decision for the sync itself and
for its dry run.

"Changed" is read from fingerprints (trackport.fingerprint): the source run's, from its
listing, latest metric points and artifact listing, against the one recorded when the run
was last synced; the copy's, from the target's listing, against the one read back after
that sync wrote it (a difference there is an edit made in the target: a conflict). A run
still RUNNING, a run without a record (copied by `trackport copy`, or records lost), a run
whose last change was cut off, and every run under `--full` are compared whole.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from trackport.domain import DELETED, Experiment, Run, SourceRunId
from trackport.errors import UnitError
from trackport.fingerprint import Fingerprint, changed_parts, fingerprint
from trackport.patching import RunPatch
from trackport.selection import runs_of
from trackport.stores.base import Selection, SinkStore, SourceStore, Unreadable
from trackport.transfer.sync_diff import run_difference
from trackport.transfer.sync_state import RunRecord, SyncState
from trackport.transfer.units import Moved, RunUnits, SourceRunContent, remap_parent, source_fingerprint

ON_CONFLICT = ("fail", "skip", "source")
ACTIONS = ("new", "updated", "unchanged", "conflicts", "gone")
RUNNING = "RUNNING"


@dataclass(frozen=True)
class SyncOptions:
    full: bool = False  # compare every run whole, not only those whose fingerprint moved
    on_conflict: str = "fail"  # a copy edited in the target: fail the run, skip it, or overwrite it

    def __post_init__(self) -> None:
        if self.on_conflict not in ON_CONFLICT:
            raise ValueError(f"on_conflict must be one of {ON_CONFLICT}, not {self.on_conflict!r}")


@dataclass
class Decision:
    action: str  # "new" | "compare" | "unchanged" | "conflict"
    parts: list[str] = field(default_factory=list)  # what moved: fingerprint parts
    reason: str = ""


class TargetIndex:
    """Per target experiment, its runs as the target reader lists them, with their
    fingerprints: read once by the first worker that asks."""

    def __init__(self, reader: SourceStore) -> None:
        self.reader = reader
        self._lock = threading.Lock()
        self._experiments: dict[str, dict[str, tuple[Run, Fingerprint]]] = {}

    def _read(self, experiment_id: str, run_ids: tuple[str, ...] = ()) -> dict[str, tuple[Run, Fingerprint]]:
        selection = Selection(include_deleted=True, run_ids=run_ids)
        runs = [r for r in runs_of(self.reader, Experiment(experiment_id, ""), selection) if isinstance(r, Run)]
        latest = self.reader.metric_summaries(runs, None, whole_history=False) if runs else {}
        return {r.run_id: (r, fingerprint(r, latest.get(r.run_id, {}))) for r in runs}

    def runs(self, experiment_id: str) -> list[tuple[Run, Fingerprint]]:
        with self._lock:
            runs = self._experiments.get(experiment_id)
            if runs is None:
                runs = self._experiments[experiment_id] = self._read(experiment_id)
            return list(runs.values())

    def get(self, experiment_id: str, run_id: str) -> tuple[Run, Fingerprint] | None:
        with self._lock:
            runs = self._experiments.get(experiment_id)
            if runs is None:
                runs = self._experiments[experiment_id] = self._read(experiment_id)
            found = runs.get(run_id)
        return found if found is not None else self.reread(experiment_id, run_id)

    def reread(self, experiment_id: str, run_id: str) -> tuple[Run, Fingerprint] | None:
        """One run again, after it was written (or where it was not in the first listing)."""
        found = self._read(experiment_id, (run_id,)).get(run_id)
        with self._lock:
            runs = self._experiments.setdefault(experiment_id, {})
            if found is None:
                runs.pop(run_id, None)
            else:
                runs[run_id] = found
        return found


def decide(record: RunRecord | None, copy_id: str | None, run: Run, source_fp: Fingerprint,
           target_fp: Fingerprint | None, options: SyncOptions) -> Decision:
    if copy_id is None:
        return Decision("new")
    known = record is not None and record.target_run_id == copy_id and not record.pending
    if not known:
        why = "last change was cut off" if record is not None and record.pending else "no record of an earlier sync"
        return Decision("compare", reason=why)
    if record.target and target_fp is not None and target_fp != record.target:
        return Decision("conflict", changed_parts(record.target, target_fp))
    moved = changed_parts(record.source, source_fp)
    if moved:
        return Decision("compare", moved)
    if options.full or run.status == RUNNING:
        return Decision("compare", reason="--full" if options.full else "still running")
    return Decision("unchanged")


class SyncRunUnits(RunUnits):
    """RunUnits for a sync (see the module docstring). `actions` counts what it did."""

    def __init__(self, state: SyncState, reader: SourceStore, options: SyncOptions, *, follows_deletions: bool) -> None:
        self.state = state
        self.index = TargetIndex(reader)
        self.options = options
        self.follows_deletions = follows_deletions  # the listing is whole: a run missing from it is gone
        self.actions: Counter = Counter()
        self._gone: set[str] = set()
        self._lock = threading.Lock()

    def _count(self, action: str) -> None:
        with self._lock:
            self.actions[action] += 1

    def listing(self, source: SourceStore, experiment: Experiment, everything: Selection) -> Iterator[Run | Unreadable]:
        listed = super().listing(source, experiment, everything)
        return self._with_gone(experiment, listed) if self.follows_deletions else listed

    def _with_gone(self, experiment: Experiment, listed) -> Iterator[Run | Unreadable]:
        """The listing, then a stand-in for each run synced earlier that it no longer holds."""
        seen = set()
        for item in listed:
            seen.add(item.source_id if isinstance(item, Unreadable) else item.run_id)
            yield item
        for record in sorted(self.state.runs.values(), key=lambda r: r.source_run_id):
            if record.source_experiment_id == experiment.experiment_id and record.source_run_id not in seen:
                with self._lock:
                    self._gone.add(record.source_run_id)
                yield Run(record.source_run_id, experiment.experiment_id, record.name, "", "", None, None, DELETED)

    def move(self, source: SourceStore, sink: SinkStore, run: Run, target_experiment_id: str, targets: dict) -> Moved:
        if run.run_id in self._gone:
            return self._gone_from_source(sink, run, target_experiment_id)
        remapped, losses = remap_parent(run, targets)
        source_fp, artifacts = source_fingerprint(source, run)
        # Looked up without side effects (find_run would also mark a copy deleted when its
        # source run is): the copy is read as it is before anything changes it.
        copy_id = sink.lookup_run(SourceRunId(run.run_id), target_experiment_id)
        held = self.index.get(target_experiment_id, copy_id) if copy_id is not None else None
        record = self.state.run(run.run_id)
        decision = decide(record, copy_id, run, source_fp, held[1] if held else None, self.options)
        if decision.action == "new" or held is None:
            moved = super().move(source, sink, run, target_experiment_id, targets)
            self._record(run, target_experiment_id, moved.target_id, source_fp)
            self._count("new" if moved.outcome == "done" else "unchanged")
            return moved
        if decision.action == "unchanged":
            self._count("unchanged")
            return Moved(copy_id, "skipped", "unchanged since the last sync")
        if decision.action == "conflict":
            self._count("conflicts")
            what = f"its copy {copy_id} was changed in the target since the last sync ({', '.join(decision.parts)})"
            if self.options.on_conflict == "fail":
                raise UnitError(f"conflict: {what}; --on-conflict source makes it equal to the source, skip leaves it")
            if self.options.on_conflict == "skip":
                return Moved(copy_id, "skipped", f"conflict: {what}; left as it is")
        copy = held[0]
        difference = run_difference(source, remapped, self.index.reader, copy, clamps_infinity=not sink.capabilities.keeps_infinity)
        if difference.patch.empty:
            self._record(run, target_experiment_id, copy_id, source_fp)
            self._count("unchanged")
            return Moved(copy_id, "skipped", "equal to the source", notes=difference.notes)
        self.state.begin_change(record or RunRecord(run.run_id, run.experiment_id, copy_id, {}, {}, run.run_name))
        written = sink.patch_run(copy_id, difference.patch, SourceRunContent(source, run, artifacts))
        self._record(run, target_experiment_id, copy_id, source_fp)
        self._count("updated")
        return Moved(
            copy_id,
            amounts={"metric_points": written.metric_points, "artifact_files": written.artifact_files,
                     "artifact_bytes": written.artifact_bytes},
            losses=losses + written.losses,
            notes=[f"updated in place: {', '.join(difference.parts)}"] + difference.notes + source.unit_notes(run),
        )

    def _record(self, run: Run, target_experiment_id: str, copy_id: str, source_fp: Fingerprint) -> None:
        held = self.index.reread(target_experiment_id, copy_id)
        target_fp = held[1] if held else {}
        self.state.record_run(RunRecord(run.run_id, run.experiment_id, copy_id, source_fp, target_fp, run.run_name))

    def _gone_from_source(self, sink: SinkStore, run: Run, target_experiment_id: str) -> Moved:
        record = self.state.run(run.run_id)
        held = self.index.get(target_experiment_id, record.target_run_id)
        self._count("gone")
        if held is None or held[0].lifecycle_stage == DELETED:
            self.state.forget(run.run_id)
            return Moved(record.target_run_id, "skipped", "gone from the source; its copy is deleted or gone already")
        self.state.begin_change(record)
        sink.patch_run(record.target_run_id, RunPatch(lifecycle_stage=DELETED), _NoContent())
        self.state.forget(run.run_id)
        return Moved(record.target_run_id, notes=["gone from the source (purged there): its copy is marked deleted"])


class _NoContent:
    def metric_batches(self):
        return iter(())

    def artifact_files(self):
        return iter(())

    def open_artifact(self, path: str):
        raise UnitError(f"no source content for {path}")
