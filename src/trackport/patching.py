"""Bringing a run a target holds up to date in place (trackport sync): the interface a sink
implements when it can, and the change it is asked to make.

A sync computes the difference between the source run and its copy in the target
(trackport.transfer.sync) and hands it to the sink as one RunPatch; the sink applies it
with its own API (a server's REST calls, a sqlite store's SQL), never by deleting the copy
and writing it again, so the copy keeps its id. A sink without these methods (a bundle)
cannot be synced into.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pyarrow as pa

from trackport.domain import ArtifactFile, DatasetInput
from trackport.stores.base import RunContent, RunWriteResult, SourceStore


@dataclass(frozen=True)
class RunPatch:
    """What to change in one target run so that it equals its source run. Empty fields:
    nothing to change there. The sink applies it in this order: restore (a deleted run
    cannot be changed), info, params, tags, metrics, inputs, artifacts, delete."""

    run_name: str | None = None  # the new name (also the mlflow.runName tag)
    status: str | None = None
    end_time: int | None = None  # the new end time (with status, as MLflow's update-run)
    new_params: dict[str, str] = field(default_factory=dict)
    # Params whose value the source changed (MLflow itself never changes one: a server
    # refuses it, and the sink reports it as a loss; a local store rewrites it).
    changed_params: dict[str, str] = field(default_factory=dict)
    set_tags: dict[str, str] = field(default_factory=dict)
    delete_tags: tuple[str, ...] = ()
    # The metric points the target lacks, as batches of domain.METRIC_SCHEMA (called once).
    metric_points: Callable[[], Iterator[pa.RecordBatch]] | None = None
    inputs: tuple[DatasetInput, ...] = ()  # dataset inputs the target lacks
    artifacts: tuple[ArtifactFile, ...] = ()  # files to write (new, or of another size), from content
    lifecycle_stage: str | None = None  # "active" (restore) or "deleted" (soft delete)
    deleted_time: int | None = None  # with "deleted": the source's time, where the target keeps one
    # The target run is deleted now: a store that cannot change a deleted run (a server)
    # restores it first and deletes it again at the end unless lifecycle_stage says "active".
    target_deleted: bool = False

    @property
    def changes_content(self) -> bool:
        """Whether it changes more than the run's lifecycle."""
        return bool(
            self.run_name is not None or self.status is not None or self.end_time is not None
            or self.new_params or self.changed_params or self.set_tags or self.delete_tags
            or self.metric_points is not None or self.inputs or self.artifacts
        )

    @property
    def empty(self) -> bool:
        return not (self.changes_content or self.lifecycle_stage)


class RunPatcher(ABC):
    """A sink whose runs can be brought up to date in place."""

    @abstractmethod
    def target_reader(self) -> SourceStore:
        """The target read as a source (its runs, histories and artifacts, provenance tags
        included): what a sync compares the source against. Closed with the sink."""

    @abstractmethod
    def patch_run(self, target_run_id: str, patch: RunPatch, content: RunContent) -> RunWriteResult:
        """Apply the patch to the target run (content: the source run, for the artifact
        files named in the patch). Returns what was written, and losses for what the target
        could not take (a changed param on a server). Each change is one of the store's own
        updates: a kill half-way leaves the run partly updated, and the next sync finishes
        it (the difference is computed from what the target holds)."""

    @abstractmethod
    def rename_experiment(self, target_experiment_id: str, name: str) -> None:
        """Rename a target experiment whose source was renamed since the last sync."""
