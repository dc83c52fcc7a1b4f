"""The difference between a source run and its copy in the target, as the RunPatch that
makes the copy equal to the source (trackport sync).

Both runs are read whole here: their params, tags, inputs, metric histories and artifact
listings. What the copy holds and the source does not (a metric point, an artifact file,
a param MLflow cannot take back) is left, and said in the notes; everything else follows
the source. trackport's own provenance tags and the run name tag (the name is set as the
name) are never part of the difference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa

from trackport.domain import DELETED, METRIC_SCHEMA, RUN_NAME_TAG, Run
from trackport.patching import RunPatch
from trackport.provenance import is_provenance_tag, rewrite_tag
from trackport.stores.base import SourceStore

_MAX_FLOAT = 1.7976931348623157e308
_NAN_BITS = np.float64("nan").view(np.int64)


@dataclass
class RunDifference:
    patch: RunPatch
    parts: list[str]  # what differs: "name", "status", "params", "tags", "metrics", ...
    notes: list[str] = field(default_factory=list)  # what the copy holds beyond the source


def _user_tags(run: Run) -> dict[str, str]:
    return {k: v for k, v in run.tags.items() if not is_provenance_tag(k) and k != RUN_NAME_TAG}


def _dataset_key(d) -> tuple:
    return (d.name, d.digest, d.source_type, d.source, d.schema, d.profile, tuple(sorted(d.tags.items())))


def _points(store: SourceStore, run: Run, clamp: bool) -> pa.Table:
    table = pa.Table.from_batches(list(store.iter_metric_batches(run)), schema=METRIC_SCHEMA)
    values = table.column("value").to_numpy()
    if clamp:
        values = np.where(np.isposinf(values), _MAX_FLOAT, np.where(np.isneginf(values), -_MAX_FLOAT, values))
    # Points are told apart by their bits, NaN by one pattern: NaN equals NaN here.
    bits = np.where(np.isnan(values), _NAN_BITS, values.astype(np.float64).view(np.int64))
    return table.append_column("bits", pa.array(bits, pa.int64()))


def _missing_points(source: pa.Table, target: pa.Table) -> pa.Table:
    """The source's points the target lacks (MLflow keeps no two equal points of a run)."""
    keys = ["key", "step", "timestamp", "bits"]
    missing = source.join(target.select(keys), keys=keys, join_type="left anti", use_threads=False)
    return missing.select(METRIC_SCHEMA.names).sort_by([("key", "ascending"), ("step", "ascending"), ("timestamp", "ascending")])


def run_difference(
    source: SourceStore, run: Run, reader: SourceStore, copy: Run, *, clamps_infinity: bool = False
) -> RunDifference:
    """run: the source run with its parent link naming the parent's copy (as it is written);
    copy: the target's run (its id, tags and state as the target reader lists them)."""
    parts: list[str] = []
    notes: list[str] = []
    patch: dict = {}
    if run.run_name != copy.run_name:
        patch["run_name"] = run.run_name
        parts.append("name")
    if run.status != copy.status or run.end_time != copy.end_time:
        patch["status"], patch["end_time"] = run.status, run.end_time
        parts.append("status")

    new_params = {k: v for k, v in run.params.items() if k not in copy.params}
    changed_params = {k: v for k, v in run.params.items() if k in copy.params and copy.params[k] != v}
    extra = sorted(copy.params.keys() - run.params.keys())
    if new_params or changed_params:
        patch["new_params"], patch["changed_params"] = new_params, changed_params
        parts.append("params")
    if extra:
        notes.append(f"the copy keeps params the source does not hold ({', '.join(extra[:5])})")

    wanted = {k: rewrite_tag(k, v, run.run_id, copy.run_id) for k, v in _user_tags(run).items()}
    held = _user_tags(copy)
    set_tags = {k: v for k, v in wanted.items() if held.get(k) != v}
    delete_tags = tuple(sorted(held.keys() - wanted.keys()))
    if set_tags or delete_tags:
        patch["set_tags"], patch["delete_tags"] = set_tags, delete_tags
        parts.append("tags")

    held_inputs = {_dataset_key(d) for d in copy.inputs}
    inputs = tuple(d for d in run.inputs if _dataset_key(d) not in held_inputs)
    if inputs:
        patch["inputs"] = inputs
        parts.append("inputs")

    missing = _missing_points(_points(source, run, clamps_infinity), _points(reader, copy, False))
    if missing.num_rows:
        patch["metric_points"] = _batches_of(missing)
        parts.append("metrics")

    files = {f.path: f for f in source.list_artifacts(run)}
    held_files = {f.path: f.size for f in reader.list_artifacts(copy)}
    to_write = tuple(f for path, f in sorted(files.items()) if held_files.get(path) != f.size)
    gone = sorted(held_files.keys() - files.keys())
    if to_write:
        patch["artifacts"] = to_write
        parts.append("artifacts")
    if gone:
        notes.append(f"the copy keeps {len(gone)} artifact file(s) the source no longer holds ({gone[0]}, ...)")

    if (run.lifecycle_stage == DELETED) != (copy.lifecycle_stage == DELETED):
        patch["lifecycle_stage"] = run.lifecycle_stage
        patch["deleted_time"] = run.deleted_time
        parts.append("lifecycle")
    return RunDifference(RunPatch(target_deleted=copy.lifecycle_stage == DELETED, **patch), parts, notes)


def _batches_of(table: pa.Table):
    def batches() -> Iterator[pa.RecordBatch]:
        yield from table.to_batches(max_chunksize=65_536)

    return batches

