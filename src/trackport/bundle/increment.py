"""IncrementSink: an export that writes only what changed since an earlier bundle (format 1.4).

The increment is a bundle like any other (its own root descriptor, experiment.json and
run.json for every unit the export selected, its manifest), whose root names the link it
was made from (`previous`, bundle/chain.py). A run's files that the previous link holds
already are not written again: run.json records them with the id of the link holding
their bytes (`link`), so the increment lists the whole state of the source and its
manifest only the bytes that are new:

* a run unchanged since the previous link (same fingerprint): run.json only, every record
  a reference;
* an artifact file of the same path and size as in the previous link: a reference;
* a metric history: a reference when the run's latest points did not move; else the
  source's history is compared with the previous one, point by point, and when every
  earlier point is still there only the points added since are written (the record lists
  the earlier parts, `earlier`), otherwise the whole history.

A run the source no longer lists, or that it lists as deleted and the export does not take,
is simply not in the increment: it is not part of the state any more.
"""
from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from trackport.domain import ArtifactFile, Run, TargetExperimentId
from trackport.errors import BadInputError, UnitError
from trackport.stores.base import RunContent, RunWriteResult, Selection, StoreDescription
from trackport.bundle import chain, descriptor
from trackport.bundle.documents import run_doc
from trackport.bundle.layout import ARTIFACTS_DIR, METRICS_FILE, ROOT_FILE, RUN_FILE, write_json
from trackport.bundle.metrics_parquet import DEFAULT_ROW_GROUP_ROWS, write_metrics
from trackport.bundle.reader import BundleSource
from trackport.bundle.validator import RunPlan, Stored
from trackport.bundle.file_copy import copy_files
from trackport.bundle.writer import BundleSink


class IncrementSink(BundleSink):
    def __init__(self, path, previous, *, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS, checked_runs: int = 1000):
        """Opens the previous link (checked as an import checks a bundle: it and its own
        chain) before anything is made at path."""
        here, there = Path(path).absolute(), Path(previous).absolute()
        if here == there:
            raise BadInputError(f"{here} is the bundle given to --since-bundle; export the increment to a new path")
        if here.parent.resolve() != there.parent.resolve():
            raise BadInputError(
                f"{there} is not in the directory of {here}: the links of a chain lie side by side; "
                f"export the increment into {there.parent}"
            )
        self._open_since(BundleSource(there, checked_runs=checked_runs), there.name)
        self._write_into(here, row_group_rows)

    def _open_since(self, previous: BundleSource, name: str) -> None:
        """previous: the link the increment is made from, opened; name: its name beside it."""
        self.previous = previous
        if not previous.root.get("bundle_id"):
            previous.close()
            raise BadInputError(
                f"{previous.describe().uri}: it has no bundle_id (format {previous.root.get('format_version')}); "
                "make a full export with this trackport first, then increments from it"
            )
        self.previous_record = chain.describe_previous(previous.path, previous.root, name)

    def _write_into(self, here: Path, row_group_rows: int) -> None:
        try:
            BundleSink.__init__(self, here, row_group_rows=row_group_rows)
        except BaseException:
            self.previous.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.previous.close()

    def begin(self, source: StoreDescription, selection: Selection) -> None:
        theirs = self.previous.source_description()
        if (theirs.kind, theirs.uri) != (source.kind, source.uri):
            raise BadInputError(
                f"{self.previous.describe().uri} holds an export of {theirs.uri!r}, not of {source.uri!r}; "
                "an increment is made from a bundle of the same source"
            )
        if (self.path / ROOT_FILE).exists():
            try:
                named = (descriptor.load_root(self.path).get("previous") or {}).get("bundle_id")
            except BadInputError:
                named = None  # super().begin refuses it in its own words
            if named != self.previous_record["bundle_id"]:
                raise BadInputError(
                    f"{self.describe().uri} is not an increment of {self.previous.describe().uri}; export the increment to a new path"
                )
        super().begin(source, selection)

    # -- runs ----------------------------------------------------------------------------
    def _previous_plan(self, run: Run) -> RunPlan | None:
        """The run as the previous link holds it; None when it holds none or it is damaged
        there (then the run is written whole)."""
        try:
            plan = self.previous.run_plan(run.run_id)
        except UnitError:
            return None
        return plan if plan is not None and plan.run.experiment_id == run.experiment_id else None

    def previous_fingerprint(self, run: Run) -> dict | None:
        plan = self._previous_plan(run)
        return None if plan is None else plan.doc.get("fingerprint")

    def put_run_since(
        self, run: Run, target_experiment_id: TargetExperimentId, content: RunContent, *, fingerprint: dict, changed: list[str]
    ) -> RunWriteResult:
        before = self._previous_plan(run)
        if before is None:
            return super().put_run_since(run, target_experiment_id, content, fingerprint=fingerprint, changed=changed)

        def write(tmp: Path) -> RunWriteResult:
            result = RunWriteResult(target_run_id=run.run_id)
            if "metrics" in changed:
                metrics = self._changed_metrics(run, content, before, tmp, result)
            else:
                metrics = _reference_metrics(before)
            artifacts = _artifacts(run, content, before, tmp / ARTIFACTS_DIR, result)
            write_json(tmp / RUN_FILE, run_doc(run, target_experiment_id, metrics, artifacts, fingerprint))
            return result

        return self._put(run, target_experiment_id, write)

    def _changed_metrics(self, run: Run, content: RunContent, before: RunPlan, tmp: Path, result: RunWriteResult) -> dict | None:
        """The source's history against the previous one: the points added since when every
        earlier point is still there, a reference when none was added, else all of it."""
        earlier: Counter = Counter()
        try:
            for batch in self.previous.iter_metric_batches(before.run):
                earlier.update(_points(batch))
        except UnitError:
            return self._whole_metrics(run, content, tmp, result)  # the previous copy is damaged
        total = sum(earlier.values())
        left = Counter(earlier)
        added = 0

        def new_rows() -> Iterator[pa.RecordBatch]:
            nonlocal added
            for batch in content.metric_batches():
                keep = []
                for point in _points(batch):
                    if left[point] > 0:
                        left[point] -= 1
                        keep.append(False)
                    else:
                        keep.append(True)
                added += sum(keep)
                if any(keep):
                    yield batch.filter(pa.array(keep))

        written = write_metrics(tmp / METRICS_FILE, run.run_id, new_rows(), row_group_rows=self.row_group_rows)
        if +left:  # a point of the previous history is gone: not an append
            (tmp / METRICS_FILE).unlink(missing_ok=True)
            return self._whole_metrics(run, content, tmp, result)
        if written is None:
            return _reference_metrics(before)
        points, sha, size = written
        result.metric_points = points
        parts = [dict(_record(p), file=METRICS_FILE, points=p.points) for p in before.metrics or ()]
        return {"file": METRICS_FILE, "points": total + points, "sha256": sha, "size": size, "earlier": parts}

    def _whole_metrics(self, run: Run, content: RunContent, tmp: Path, result: RunWriteResult) -> dict | None:
        written = write_metrics(tmp / METRICS_FILE, run.run_id, content.metric_batches(), row_group_rows=self.row_group_rows)
        if written is None:
            return None
        points, sha, size = written
        result.metric_points = points
        return {"file": METRICS_FILE, "points": points, "sha256": sha, "size": size}


def _record(stored: Stored) -> dict:
    """A record naming a file of an earlier link: its size, sha256 and the link's id."""
    return {"size": stored.size, "sha256": stored.sha256, "link": stored.index.bundle_id}


def _reference_metrics(before: RunPlan) -> dict | None:
    """The previous link's history record, every part naming the link holding it."""
    if not before.metrics:
        return None
    *parts, last = before.metrics
    record = dict(_record(last), file=METRICS_FILE, points=sum(p.points for p in before.metrics))
    if parts:
        record["earlier"] = [dict(_record(p), file=METRICS_FILE, points=p.points) for p in parts]
    return record


def _artifacts(run: Run, content: RunContent, before: RunPlan, root: Path, result: RunWriteResult) -> list[dict]:
    """Every artifact of the run: a reference where the previous link has a file of that
    path and size, else copied (hashed as it is written)."""

    def held(af: ArtifactFile) -> dict | None:
        known = before.artifacts.get(af.path)
        if known is not None and af.size is not None and known.size == af.size:
            return dict(_record(known), path=af.path)
        return None

    return copy_files(content, root, f"run {run.run_id}: artifact", result, held)


def _points(batch: pa.RecordBatch) -> Iterator[tuple]:
    """(key, step, timestamp, value bits) of each point: NaN equals NaN here, as stored."""
    columns = [batch.column(name).to_pylist() for name in ("key", "step", "timestamp", "value")]
    for key, step, timestamp, value in zip(*columns):
        yield key, step, timestamp, struct.pack("<d", value)
