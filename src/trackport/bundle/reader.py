"""BundleSource: reads a complete bundle (format 1.x) as a SourceStore.

Every JSON document read is validated against its schema. A bad experiment.json or
run.json costs that unit (UnitError naming the file); a bad root descriptor is fatal.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO, ContextManager, Iterator

import pyarrow as pa

from trackport.domain import ArtifactFile, DatasetInput, DELETED, Experiment, Run
from trackport.errors import BadInputError, TrackportError, UnitError
from trackport.stores.base import Selection, SourceStore, StoreDescription, Unreadable
from trackport.bundle import descriptor, schemas
from trackport.bundle.layout import (
    ARTIFACTS_DIR,
    EXPERIMENT_FILE,
    EXPERIMENTS_DIR,
    MANIFEST_FILE,
    RUN_FILE,
    RUNS_DIR,
    check_component,
    check_relpath,
    resolve_inside,
)
from trackport.bundle.metrics_parquet import read_metrics


def load_doc(path: Path, schema: str, error=UnitError) -> dict:
    """A JSON document, validated; raises `error` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise error(f"{path} cannot be read as JSON: {e}") from None
    problem = schemas.first_error(schema, doc)
    if problem:
        raise error(f"{path} does not match the {schema} schema: {problem}")
    return doc


def experiment_from_doc(doc: dict) -> Experiment:
    return Experiment(
        experiment_id=doc["experiment_id"],
        name=doc["name"],
        lifecycle_stage=doc["lifecycle_stage"],
        artifact_location=doc["artifact_location"],
        creation_time=doc["creation_time"],
        last_update_time=doc["last_update_time"],
        tags=dict(doc["tags"]),
    )


def run_from_doc(doc: dict) -> Run:
    info = doc["info"]
    return Run(
        run_id=info["run_id"],
        experiment_id=info["experiment_id"],
        run_name=info["run_name"],
        user_id=info["user_id"],
        status=info["status"],
        start_time=info["start_time"],
        end_time=info["end_time"],
        lifecycle_stage=info["lifecycle_stage"],
        deleted_time=info["deleted_time"],
        artifact_uri=info["artifact_uri"],
        params=dict(doc["params"]),
        tags=dict(doc["tags"]),
        inputs=tuple(
            DatasetInput(
                name=i["name"],
                digest=i["digest"],
                source_type=i["source_type"],
                source=i["source"],
                schema=i["schema"],
                profile=i["profile"],
                tags=dict(i["tags"]),
            )
            for i in doc["inputs"]
        ),
    )


class BundleSource(SourceStore):
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()
        if not self.path.exists():
            raise BadInputError(f"{self.path} does not exist")
        if not self.path.is_dir():
            raise BadInputError(f"{self.path} is not a directory, so not a trackport bundle")
        self.root = descriptor.load_root(self.path)
        if not (self.path / MANIFEST_FILE).is_file():
            raise BadInputError(
                f"{self.path} is incomplete (no {MANIFEST_FILE}): the export did not finish; re-run the export"
            )

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="bundle", uri=str(self.path), mlflow_version=self.root["source"].get("mlflow_version"))

    def source_description(self) -> StoreDescription:
        """The store the bundle was exported from."""
        s = self.root["source"]
        return StoreDescription(kind=s["kind"], uri=s["uri"], mlflow_version=s.get("mlflow_version"))

    # -- experiments -------------------------------------------------------------------
    def list_experiments(self, selection: Selection) -> Iterator[Experiment | Unreadable]:
        """Valid selected experiments (by id order), then an Unreadable for each invalid
        experiment.json that the selection would take."""
        exp_root = self.path / EXPERIMENTS_DIR
        names = sorted(
            (e.name for e in os.scandir(exp_root) if e.is_dir() and not e.name.startswith(".")),
            key=lambda s: (len(s), s),
        ) if exp_root.is_dir() else []
        wanted = set(selection.experiments)
        found: list[Experiment] = []
        bad: list[Unreadable] = []
        matched: set[str] = set()
        for name in names:
            path = exp_root / name / EXPERIMENT_FILE
            try:
                exp = experiment_from_doc(load_doc(path, schemas.EXPERIMENT))
                if exp.experiment_id != name:
                    raise UnitError(f"{path} holds experiment id {exp.experiment_id!r} in directory {name!r}")
            except UnitError as e:
                if not wanted or name in wanted:
                    matched.add(name)
                    bad.append(Unreadable("experiment", name, str(e)))
                continue
            if wanted:
                hits = wanted & {exp.experiment_id, exp.name}
                if not hits:
                    continue
                matched |= hits
            if exp.lifecycle_stage == DELETED and not selection.include_deleted:
                continue
            found.append(exp)
        missing = sorted(wanted - matched)
        if missing:
            raise BadInputError(f"no experiment named or with id {', '.join(map(repr, missing))} in bundle {self.path}")
        yield from found
        yield from bad

    # -- runs --------------------------------------------------------------------------
    def _run_dir(self, experiment_id: str, run_id: str) -> Path:
        try:
            return self.path / EXPERIMENTS_DIR / check_component(experiment_id, "experiment id") / RUNS_DIR / check_component(run_id, "run id")
        except ValueError as e:
            raise UnitError(str(e)) from None

    def _run_doc(self, run: Run) -> tuple[Path, dict]:
        d = self._run_dir(run.experiment_id, run.run_id)
        return d, load_doc(d / RUN_FILE, schemas.RUN)

    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run | Unreadable]:
        """Oldest start_time first (runs without one last, then by id), then an
        Unreadable for each invalid run.json."""
        rd = self.path / EXPERIMENTS_DIR / check_component(experiment.experiment_id, "experiment id") / RUNS_DIR
        if not rd.is_dir():
            return
        wanted = set(selection.run_ids)
        runs: list[Run] = []
        bad: list[Unreadable] = []
        with os.scandir(rd) as it:
            names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
        for name in names:
            if wanted and name not in wanted:
                continue
            path = rd / name / RUN_FILE
            try:
                run = run_from_doc(load_doc(path, schemas.RUN))
                if run.run_id != name or run.experiment_id != experiment.experiment_id:
                    raise UnitError(f"{path} holds run {run.run_id!r} of experiment {run.experiment_id!r}, not its directory's")
            except UnitError as e:
                bad.append(Unreadable("run", name, str(e)))
                continue
            if run.lifecycle_stage == DELETED and not selection.include_deleted:
                continue
            runs.append(run)
        runs.sort(key=lambda r: (r.start_time is None, r.start_time or 0, r.run_id))
        yield from runs
        yield from bad

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        d, doc = self._run_doc(run)
        metrics = doc["metrics"]
        if metrics is None:
            return
        try:
            path = resolve_inside(d, metrics["file"])
        except ValueError as e:
            raise UnitError(f"{d / RUN_FILE}: metrics {e}") from None
        try:
            yield from read_metrics(path)
        except TrackportError:
            raise
        except (OSError, pa.ArrowException) as e:
            raise UnitError(f"{path} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def list_artifacts(self, run: Run) -> Iterator[ArtifactFile]:
        d, doc = self._run_doc(run)
        files = []
        for a in doc["artifacts"]:
            try:
                check_relpath(a["path"])
            except ValueError as e:
                raise UnitError(f"{d / RUN_FILE}: artifact {e}") from None
            files.append(ArtifactFile(path=a["path"], size=a["size"]))
        files.sort(key=lambda f: f.path)
        return iter(files)

    def open_artifact(self, run: Run, path: str) -> ContextManager[BinaryIO]:
        d = self._run_dir(run.experiment_id, run.run_id)
        try:
            target = resolve_inside(d / ARTIFACTS_DIR, path)
        except ValueError as e:
            raise UnitError(f"run {run.run_id}: artifact {e}") from None
        try:
            return open(target, "rb")
        except OSError as e:
            raise UnitError(f"{target} cannot be opened: {e.strerror or e}") from None
