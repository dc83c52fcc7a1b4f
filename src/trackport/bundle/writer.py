"""BundleSink: writes experiments, runs and units of generic kinds into a bundle
directory (format v1).

Crash safety: each run is written into runs/.<run_id>.tmp-<random>/ and renamed to
runs/<run_id>/ when whole; single files (experiment.json, unit documents, the root) go
through a temp name and os.replace; the manifest is written last by finish(). Thread-safe
for concurrent put_run / put_unit of different units.

Unit documents (a million traces: a million files) are written without an fsync each, and
finish() makes them durable with one sync of the file system before the manifest. A kill
leaves each document whole or absent all the same; a power cut could tear one, so while
documents are unsynced a marker (transfer/unsynced) says so, and the next export into the
bundle, finding it, takes a document as written only when it reads back whole.
"""
from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

from trackport.domain import Capabilities, Experiment, Run
from trackport.domain import SourceRunId, TargetExperimentId, TargetRunId
from trackport.errors import BadInputError, TrackportError, UnitError, storage_error
from trackport.locking import LOCK_FILE, TargetLock
from trackport.stores.base import (
    ExperimentWriteResult,
    RunContent,
    RunWriteResult,
    Selection,
    SinkStore,
    StoreDescription,
    UnitContent,
    UnitWriteResult,
)
from trackport import kinds
from trackport._files import check_component, fsync_dir, is_temp_name, temp_name
from trackport._files import sync_file_system, write_bytes_atomic
from trackport.kinds import Unit
from trackport.bundle import descriptor, schemas, spans
from trackport.bundle.documents import dumps, experiment_doc, loads, run_doc, short, unit_doc
from trackport.bundle.layout import (
    ARTIFACTS_DIR,
    EXPERIMENT_FILE,
    EXPERIMENTS_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    ROOT_FILE,
    RUN_FILE,
    RUNS_DIR,
    TRANSFER_DIR,
    UNITS_DIR,
    experiment_dir,
    run_dir,
    runs_dir,
    unit_file,
    unit_files_dir,
    write_json,
    write_json_atomic,
)
from trackport.bundle.counts import count_bundle
from trackport.bundle.file_copy import copy_files
from trackport.bundle.manifest import write_manifest
from trackport.bundle.metrics_parquet import DEFAULT_ROW_GROUP_ROWS, write_metrics


UNSYNCED_FILE = "unsynced"  # in transfer/: unit documents were written and not yet synced


def _os_error(e: OSError, what: str) -> TrackportError:
    return storage_error(e, what) or UnitError(f"cannot write {what}: {e.strerror or e}")


class BundleSink(SinkStore):
    capabilities = Capabilities.lossless()

    def __init__(self, path: str | os.PathLike, *, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS):
        """Opens the bundle directory for writing (made if missing) and takes its lock. A
        directory that holds something else than a bundle is refused untouched."""
        self.path = Path(path).absolute()
        self.row_group_rows = row_group_rows
        self._root_doc: dict | None = None
        self._lock = threading.Lock()
        p = self.path
        if p.exists() and not p.is_dir():
            raise BadInputError(f"{p} exists and is not a directory; export to a new path")
        if p.is_dir() and not (p / ROOT_FILE).exists() and not _empty_but_for_a_lock(p):
            raise BadInputError(f"{p} is not empty and is not a trackport bundle; export to a new or empty directory")
        made = [d for d in (p, p / TRANSFER_DIR) if not d.exists()]
        self._made_here = made  # removed again by close() if nothing was ever begun
        self._begun = False
        self._check_documents = False  # True: the last export into it did not sync its documents
        self._target_lock = TargetLock(p / TRANSFER_DIR, str(p))

    # The link an increment is made from (bundle/increment.py), written into a new root.
    previous_record: dict | None = None

    # -- description -------------------------------------------------------------------
    def describe(self) -> StoreDescription:
        return StoreDescription(kind="bundle", uri=str(self.path))

    def state_dir(self) -> Path:
        return self.path / TRANSFER_DIR

    def close(self) -> None:
        self._target_lock.release()
        if not self._begun:  # opened, then refused before any write: leave no bundle behind
            for made in reversed(self._made_here):
                (made / LOCK_FILE).unlink(missing_ok=True)
                try:
                    made.rmdir()
                except OSError:
                    pass  # not empty: it holds more than this sink made

    # -- lifecycle ---------------------------------------------------------------------
    def begin(self, source: StoreDescription, selection: Selection) -> None:
        self._begun = True
        p = self.path
        source_doc = {"kind": source.kind, "uri": source.uri, "mlflow_version": source.mlflow_version}
        old: dict | None = None
        if (p / ROOT_FILE).exists():
            try:
                old = descriptor.load_root(p)
            except BadInputError as e:
                raise BadInputError(f"{p} is not a trackport bundle in progress ({e}); export to a new path") from None
            old_src = old.get("source") or {}
            if (old_src.get("kind"), old_src.get("uri")) != (source.kind, source.uri):
                raise BadInputError(
                    f"{p} holds an export of {old_src.get('uri')!r}, not of {source.uri!r}; "
                    "export the same source into it, or export to a new path"
                )
        self._remove_stale_temps()  # of a killed export into it: this one holds the lock now
        if old is not None and (p / MANIFEST_FILE).exists():
            # A complete bundle of the same source: add what is new. Its root and manifest
            # stay as they are until finish() rewrites both, so a run that dies half-way
            # leaves the bundle complete as it was, plus some unlisted run directories that
            # readers ignore.
            self._root_doc = old
            self._mark_unsynced()
            return
        created_at = old.get("created_at") if old is not None else None
        bundle_id = old.get("bundle_id") if old is not None else None
        try:  # the root first: a kill before it leaves nothing but the lock and a temp file
            doc = descriptor.build_root(
                source_doc, selection.to_json(), created_at=created_at, bundle_id=bundle_id, previous=self.previous_record
            )
            write_json_atomic(p / ROOT_FILE, doc)
            (p / EXPERIMENTS_DIR).mkdir(exist_ok=True)
        except OSError as e:
            raise _os_error(e, f"the bundle at {p}") from None
        self._root_doc = doc
        self._mark_unsynced()

    def _mark_unsynced(self) -> None:
        """The marker made durable before any document is written without its fsync."""
        marker = self.path / TRANSFER_DIR / UNSYNCED_FILE
        self._check_documents = marker.exists()
        if not self._check_documents:
            try:
                write_bytes_atomic(marker, b"unit documents written since are synced by finish()\n")
                fsync_dir(marker.parent)
            except OSError as e:
                raise _os_error(e, f"the bundle at {self.path}") from None

    def _remove_stale_temps(self) -> None:
        """Temp files/dirs left by a killed export: top level, experiment dirs, runs dirs,
        unit kind folders."""
        dirs = [self.path, self.path / UNITS_DIR]
        if (self.path / UNITS_DIR).is_dir():
            dirs += [k for k in (self.path / UNITS_DIR).iterdir() if k.is_dir() and not k.is_symlink()]
        exp_root = self.path / EXPERIMENTS_DIR
        if exp_root.is_dir():
            for e in exp_root.iterdir():
                if e.is_dir():
                    dirs += [exp_root, e, e / RUNS_DIR, e / UNITS_DIR]
                    if (e / UNITS_DIR).is_dir():
                        dirs += [k for k in (e / UNITS_DIR).iterdir() if k.is_dir() and not k.is_symlink()]
        for d in dict.fromkeys(dirs):
            if not d.is_dir():
                continue
            with os.scandir(d) as entries:  # streamed: a million traces
                for child in (Path(e.path) for e in entries if is_temp_name(e.name)):
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)

    def finish(self, counts: dict) -> None:
        """Rewrite the root with counts taken from the bundle itself, then write the
        manifest. The engine's counts are not trusted blindly: on a resumed export they
        would cover only this session; the bundle's own run.json files cover all of it."""
        root_doc = self._root_doc or descriptor.load_root(self.path)
        self._remove_stale_temps()
        try:
            spans.consolidate_all(self.path)  # traces' spans into each experiment's Parquet file (1.5)
            sync_file_system(self.path)  # every unit document, in one call (see the module docstring)
            (self.path / TRANSFER_DIR / UNSYNCED_FILE).unlink(missing_ok=True)
            fsync_dir(self.path / TRANSFER_DIR)
            root_doc = dict(root_doc, format_version=descriptor.newest_version(root_doc), counts=count_bundle(self.path))
            root_doc.setdefault("bundle_id", uuid.uuid4().hex)  # a bundle of format 1.3 added to
            write_json_atomic(self.path / ROOT_FILE, root_doc)
            write_manifest(self.path)
        except OSError as e:
            raise _os_error(e, f"the bundle at {self.path} (finishing it: spans files, root descriptor, manifest)") from None
        self._root_doc = root_doc

    # -- writes ------------------------------------------------------------------------
    def put_experiment(self, experiment: Experiment) -> ExperimentWriteResult:
        try:
            d = experiment_dir(self.path, experiment.experiment_id)
        except ValueError as e:
            raise UnitError(f"experiment {experiment.name!r}: {e}") from None
        created = not (d / EXPERIMENT_FILE).is_file()
        try:
            (d / RUNS_DIR).mkdir(parents=True, exist_ok=True)
            write_json_atomic(d / EXPERIMENT_FILE, experiment_doc(experiment))
        except OSError as e:
            raise _os_error(e, f"experiment {experiment.name!r} into {d}") from None
        return ExperimentWriteResult(TargetExperimentId(experiment.experiment_id), created)

    def find_run(self, run: Run, target_experiment_id: TargetExperimentId) -> TargetRunId | None:
        return self.lookup_run(SourceRunId(run.run_id), target_experiment_id)

    def lookup_run(self, source_run_id: SourceRunId, target_experiment_id: TargetExperimentId) -> TargetRunId | None:
        try:
            d = run_dir(self.path, target_experiment_id, source_run_id)
        except ValueError:
            return None
        return TargetRunId(source_run_id) if (d / RUN_FILE).is_file() else None

    def put_run(
        self, run: Run, target_experiment_id: TargetExperimentId, content: RunContent, *, fingerprint: dict | None = None
    ) -> RunWriteResult:
        """fingerprint: the run's (trackport.fingerprint), recorded in run.json (format 1.4)."""
        write = lambda tmp: self._write_run(run, target_experiment_id, content, tmp, fingerprint)  # noqa: E731
        return self._put(run, target_experiment_id, write)

    def previous_fingerprint(self, run: Run) -> dict | None:
        """The run's fingerprint in the link an increment is made from (None: no such link)."""
        return None

    def put_run_since(
        self, run: Run, target_experiment_id: TargetExperimentId, content: RunContent, *, fingerprint: dict, changed: list[str]
    ) -> RunWriteResult:
        """put_run, recording the run's fingerprint (trackport.fingerprint) in run.json;
        into an increment, what did not change (changed: the parts that did) as references."""
        return self.put_run(run, target_experiment_id, content, fingerprint=fingerprint)

    def _put(self, run: Run, target_experiment_id: TargetExperimentId, write) -> RunWriteResult:
        """The run written by write(temp dir), then renamed into place."""
        try:
            check_component(run.run_id, "run id")
            parent = runs_dir(self.path, target_experiment_id)
        except ValueError as e:
            raise UnitError(f"run {run.run_id!r}: {e}") from None
        final = parent / run.run_id
        tmp = parent / temp_name(run.run_id)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            result = write(tmp)
            self._publish(tmp, final)
            return result
        except OSError as e:
            raise _os_error(e, f"run {run.run_id} into {parent}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _write_run(self, run: Run, eid: str, content: RunContent, tmp: Path, fingerprint: dict | None = None) -> RunWriteResult:
        result = RunWriteResult(target_run_id=TargetRunId(run.run_id))
        written = write_metrics(tmp / METRICS_FILE, run.run_id, content.metric_batches(), row_group_rows=self.row_group_rows)
        metrics = None
        if written is not None:
            points, sha, size = written
            metrics = {"file": METRICS_FILE, "points": points, "sha256": sha, "size": size}
            result.metric_points = points
        artifacts = copy_files(content, tmp / ARTIFACTS_DIR, f"run {run.run_id}: artifact", result)
        write_json(tmp / RUN_FILE, run_doc(run, eid, metrics, artifacts, fingerprint))
        return result

    def find_unit(self, unit: Unit, target_experiment_id: str | None) -> str | None:
        """The unit's id when its document is there (written whole: it is renamed into place;
        after an export that did not sync its documents, when it also reads back whole)."""
        try:
            path = unit_file(self.path, target_experiment_id, unit.kind, unit.unit_id)
        except ValueError:
            return None
        if not path.is_file() or (self._check_documents and not _reads_back(path, unit)):
            return None
        return unit.unit_id

    def lookup_unit(self, kind: str, source_id: str, target_experiment_id: str | None) -> str | None:
        """The id of the complete document of that unit, where a reference to it is
        resolved (a bundle keeps ids)."""
        probe = Unit(kind, source_id, target_experiment_id)
        return self.find_unit(probe, target_experiment_id)

    def put_unit(self, unit: Unit, target_experiment_id: str | None, content: UnitContent | None = None) -> UnitWriteResult:
        """Write the unit's document (experiments/<E>/units/<kind>/<name>.json, or
        units/<kind>/<name>.json for the workspace's; name: layout.unit_name of its id),
        replacing an earlier copy, and with content (a kind with files) its files first,
        into the folder <name>/ beside it. A document its reader would refuse is not
        written: UnitError. The document is written last: a folder without it is what a
        killed export left, and is replaced."""
        if unit.kind in kinds.BUILT_IN:
            raise UnitError(f"{unit.kind} {unit.unit_id!r} is not a unit of a generic kind")
        try:
            path = unit_file(self.path, target_experiment_id, unit.kind, unit.unit_id)
        except ValueError as e:
            raise UnitError(f"{unit.kind} {short(str(unit.unit_id), 80)!r}: {e}") from None
        result = UnitWriteResult(unit.unit_id)
        files = None if content is None else self._write_unit_files(unit, path, content, result)
        doc = unit_doc(unit, target_experiment_id, files)
        kind = kinds.kind(unit.kind)
        errors = schemas.errors(schemas.UNIT, doc)
        if not errors and kind.schema is not None:
            errors = schemas.body_errors(kind.schema, doc["body"])
        if errors:
            raise UnitError(f"{unit.kind} {unit.unit_id!r} is not valid for a bundle: {errors[0]}")
        try:
            data = dumps(doc).encode("utf-8")
        except (TypeError, ValueError) as e:  # NaN, Infinity or a non-JSON value in the body
            raise UnitError(f"{unit.kind} {unit.unit_id!r} cannot be written as JSON: {e}") from None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data, durable=False)  # synced by finish()
        except OSError as e:
            raise _os_error(e, f"{unit.kind} {unit.unit_id!r} into {path.parent}") from None
        return result

    def _write_unit_files(self, unit: Unit, document: Path, content: UnitContent, result: UnitWriteResult) -> list[dict]:
        """The unit's files into its folder, made under a temp name and renamed whole."""
        final = unit_files_dir(document)
        tmp = final.with_name(temp_name(final.name))
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            files = copy_files(content, tmp, f"{unit.kind} {unit.unit_id}: file", result)
            with self._lock:
                if os.path.lexists(final):  # left by a killed export into this bundle (see put_unit)
                    shutil.rmtree(final)
                os.rename(tmp, final)
            fsync_dir(final.parent)
        except OSError as e:
            raise _os_error(e, f"the files of {unit.kind} {unit.unit_id!r} into {final.parent}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return files

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rename the finished temp dir into place. A directory already there without a
        run.json was not written by trackport (its runs appear whole): it is left alone."""
        with self._lock:
            if os.path.lexists(final):
                raise UnitError(
                    f"{final} exists but holds no complete run (no {RUN_FILE}); it was not written by trackport,"
                    " so it is left alone: move it away, then run the same command again"
                )
            os.rename(tmp, final)
        fsync_dir(final.parent)
        self.published(final)

    def published(self, run_dir: Path) -> None:
        """A run directory just renamed into place (a bundle on S3 sends it: s3_stores)."""


def _reads_back(path: Path, unit: Unit) -> bool:
    """The document at path parses and is the unit's (a power cut can tear an unsynced one)."""
    try:
        doc = loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("kind") == unit.kind and doc.get("id") == unit.unit_id


def _empty_but_for_a_lock(path: Path) -> bool:
    """An empty directory, or one holding only what a writer killed before its first file
    leaves: transfer/ with its lock, and a temporary file of the root descriptor."""
    for entry in path.iterdir():
        if is_temp_name(entry.name) and entry.is_file():
            continue
        if entry.name != TRANSFER_DIR or not entry.is_dir():
            return False
        if [e.name for e in entry.iterdir()] not in ([], [LOCK_FILE]):
            return False
    return True
