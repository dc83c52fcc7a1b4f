"""Runs moved into a bundle with their fingerprints, and into an increment (export
--since-bundle) as references to what the previous link holds already.

`IncrementalRunUnits` is the run unit type of every export: for each run it builds the
run's fingerprint (trackport.fingerprint) from what the source gives cheaply (the run's
listing, its latest metric points, its artifact paths and sizes), compares it with the one
the previous link recorded (none for a full export: every part counts as changed) and hands
the run, its fingerprint and the parts that changed to the sink's `put_run_since`. The bundle
sink records the fingerprint; an increment's sink writes an unchanged run as references
only and a changed one with references for what it holds already (bundle/increment.py).
A sink without `put_run_since` gets the run as RunUnits moves it.
"""
from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from typing import BinaryIO, Iterator

import pyarrow as pa

from trackport.domain import PARENT_RUN_ID_TAG, ArtifactFile, Run
from trackport.fingerprint import PARTS, changed_parts, fingerprint
from trackport.stores.base import SinkStore, SourceStore
from trackport.transfer.units import Key, Moved, RunUnits


class _Content:
    """A run's metrics and artifacts pulled from the source as the sink writes, its artifact
    listing (read once for the fingerprint) kept."""

    def __init__(self, source: SourceStore, run: Run, artifacts: list[ArtifactFile]) -> None:
        self._source, self._run, self._artifacts = source, run, artifacts

    def metric_batches(self) -> Iterator[pa.RecordBatch]:
        return self._source.iter_metric_batches(self._run)

    def artifact_files(self) -> Iterator[ArtifactFile]:
        return iter(self._artifacts)

    def open_artifact(self, path: str) -> AbstractContextManager[BinaryIO]:
        return self._source.open_artifact(self._run, path)


def run_fingerprint(source: SourceStore, run: Run) -> tuple[dict, list[ArtifactFile]]:
    """The run's fingerprint from the source's latest points and artifact listing (kept)."""
    latest = source.metric_summaries([run], None, whole_history=False).get(run.run_id, {})
    artifacts = list(source.list_artifacts(run))
    return fingerprint(run, latest, artifacts), artifacts


class IncrementalRunUnits(RunUnits):
    def move(self, source: SourceStore, sink: SinkStore, run: Run, target_experiment_id: str, targets: dict) -> Moved:
        put = getattr(sink, "put_run_since", None)
        if put is None:
            return super().move(source, sink, run, target_experiment_id, targets)
        remapped, losses = _parent_in_target(run, targets)
        existing = sink.find_run(remapped, target_experiment_id)
        if existing is not None:
            return Moved(existing, "skipped", "already complete in the target")
        found, artifacts = run_fingerprint(source, run)
        before = sink.previous_fingerprint(run)
        changed = changed_parts(before, found) if before else list(PARTS)
        if before and "artifacts" not in before:
            changed.append("artifacts")  # not compared: each file is still matched by path and size
        if not sink.capabilities.undoes_failed_runs:
            source.check_run(run)
        missing = source.missing_artifact_folder(run)
        result = put(remapped, target_experiment_id, _Content(source, run, artifacts), fingerprint=found, changed=changed)
        notes = [f"no artifact folder at {missing}"] if missing else []
        if before and not changed:
            notes.append("unchanged since the previous bundle: written as a reference to it")
        return Moved(
            result.target_run_id,
            amounts={
                "metric_points": result.metric_points,
                "artifact_files": result.artifact_files,
                "artifact_bytes": result.artifact_bytes,
            },
            losses=losses + result.losses,
            notes=notes,
            missing_artifact_folder=missing,
        )


def _parent_in_target(run: Run, targets: dict[Key, str | None]) -> tuple[Run, list[str]]:
    """The run with its parent link naming the parent's copy (as RunUnits does)."""
    parent = run.parent_run_id
    if not parent:
        return run, []
    target_parent = targets.get(("run", parent))
    if target_parent is None:
        return run, [f"parent run {parent} is not in the target; {PARENT_RUN_ID_TAG} keeps its source id"]
    if target_parent == parent:
        return run, []
    return dataclasses.replace(run, tags={**run.tags, PARENT_RUN_ID_TAG: target_parent}), []
