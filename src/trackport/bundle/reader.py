"""BundleSource: reads a complete bundle (format 1.x) as a SourceStore.

A bundle may be damaged or hostile, so the reader trusts nothing it has not checked
(docs/bundle-format.md, "Reading untrusted bundles"):

* on opening, the root descriptor and every manifest.jsonl line are checked (safe paths,
  strict path order) and the descriptor's bytes against its manifest entry: any damage
  there is fatal (BadInputError), before anything is written;
* the units are the experiment.json and run.json files the manifest lists; files it
  does not list are not read;
* before a run is handed to the engine, its run.json (size, sha256, schema, ids) and the
  size of every file it names are checked against the manifest, which must agree with
  run.json's own records; no path may pass through a symbolic link;
* the Parquet file is hashed before its first batch, and checked (types, run id, row
  count) while streaming; an artifact stream is hashed as it is read and raises before
  its last bytes are returned when they do not match.

Damage to a run or experiment costs that unit (UnitError naming the file).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ContextManager, Iterator

import pyarrow as pa

from trackport.domain import ArtifactFile, DatasetInput, DELETED, Experiment, Run
from trackport.errors import BadInputError, TrackportError, UnitError
from trackport.stores.base import Selection, SourceStore, StoreDescription, Unreadable
from trackport.stores.experiment_refs import pick_experiment
from trackport.bundle import descriptor, schemas
from trackport.bundle.layout import (
    ARTIFACTS_DIR,
    CHUNK_SIZE,
    EXPERIMENT_FILE,
    EXPERIMENTS_DIR,
    MANIFEST_FILE,
    ROOT_FILE,
    RUN_FILE,
    RUNS_DIR,
    check_component,
    check_relpath,
    sha256_file,
)
from trackport.bundle.manifest import ManifestEntry, parse_line
from trackport.bundle.metrics_parquet import MetricsFileError, read_metrics

# A JSON document of a bundle (experiment.json, run.json) larger than this is refused
# before it is read: it is held whole in memory while parsed.
MAX_DOCUMENT_BYTES = 256 << 20
PLAN_CACHE_SIZE = 256  # checked runs kept for the worker threads


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON (NaN and Infinity are not allowed)")


def _no_duplicate_keys(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {_short(key, 80)!r} appears twice in one object")
        out[key] = value
    return out


def parse_json(data: bytes, path: Path, error=UnitError):
    """Strict JSON: UTF-8, no NaN/Infinity, no repeated keys, bounded nesting."""
    try:
        return json.loads(
            data.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_no_duplicate_keys
        )
    except RecursionError:
        raise error(f"{path} cannot be read as JSON: nested too deeply") from None
    except ValueError as e:  # includes UnicodeDecodeError
        raise error(f"{path} cannot be read as JSON: {_short(str(e))}") from None


def check_doc(doc: object, path: Path, schema: str, error=UnitError) -> dict:
    problem = schemas.first_error(schema, doc)
    if problem:
        raise error(f"{path} does not match the {schema} schema: {problem}")
    return doc  # type: ignore[return-value]


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


@dataclass(frozen=True)
class _ManifestIndex:
    """What the reader keeps of manifest.jsonl: the entries of the root descriptor and of
    every experiment.json, and, per run directory, where its lines are in the file (a
    run's lines are contiguous because the manifest is sorted), so memory grows with the
    number of runs, not of files."""

    root: ManifestEntry | None
    experiments: dict[str, ManifestEntry | None]  # experiment id -> its experiment.json entry
    runs: dict[str, dict[str, tuple[int, int]]]  # experiment id -> run id -> (offset, end)
    run_homes: dict[str, list[str]]  # run id -> experiment ids holding a directory of it


@dataclass(frozen=True)
class _RunPlan:
    """A run whose files were checked: what its metrics and artifacts must be."""

    run: Run
    run_json: Path
    metrics: tuple[Path, int, str, int] | None  # path, size, sha256, points
    artifacts: dict[str, tuple[Path, int, str]]  # artifact path -> (file, size, sha256)


class _CheckedArtifact:
    """A binary stream of one artifact file that hashes what it reads.

    Bytes are hashed the first time they are read (a rewind for a retry re-reads without
    re-hashing; a seek forward hashes the skipped range first). The read that would return
    the file's last byte, or that finds the file shorter or longer than recorded, raises
    UnitError instead when the content does not match: a consumer that writes what it
    reads never holds the whole damaged file."""

    def __init__(self, f: BinaryIO, path: Path, size: int, sha256: str) -> None:
        self._f = f
        self._path = path
        self._size = size
        self._sha = sha256
        self._hash = hashlib.sha256()
        self._hashed = 0
        self._verified = False
        self._failure: str | None = None

    # -- the checks
    def _fail(self, why: str) -> None:
        self._failure = f"{self._path} {why}: the artifact is damaged, so its run is not imported"
        raise UnitError(self._failure)

    def _absorb(self, data: bytes) -> None:
        if self._hashed + len(data) > self._size:
            self._fail(f"holds more than the {self._size} bytes recorded for it")
        self._hash.update(data)
        self._hashed += len(data)
        if self._hashed == self._size and not self._verified:
            if self._hash.hexdigest() != self._sha:
                self._fail("does not match its sha256 recorded in run.json and manifest.jsonl")
            self._verified = True

    def _catch_up(self, position: int) -> None:
        fd = self._f.fileno()
        while self._hashed < position:
            chunk = os.pread(fd, min(CHUNK_SIZE, position - self._hashed), self._hashed)
            if not chunk:
                self._fail(f"is shorter than the {self._size} bytes recorded for it")
            self._absorb(chunk)

    # -- file protocol
    def read(self, n: int | None = -1) -> bytes:
        if self._failure:
            raise UnitError(self._failure)
        position = self._f.tell()
        if position > self._hashed:
            self._catch_up(position)
        data = self._f.read(-1 if n is None else n)
        end = position + len(data)
        if end > self._hashed:
            self._absorb(data[self._hashed - position :])
        at_end = n is None or n < 0 or len(data) < n  # a buffered file reads short only at its end
        if at_end and self._f.tell() >= self._hashed and self._hashed < self._size:
            self._fail(f"is shorter than the {self._size} bytes recorded for it")
        if self._hashed == self._size and not self._verified:
            self._absorb(b"")  # an empty file: verified at its first read
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _CheckedArtifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BundleSource(SourceStore):
    takes_deleted_by_default = True  # a bundle holds what its export selected

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
        self._real_root = os.path.realpath(self.path)
        self._manifest = self.path / MANIFEST_FILE
        self._index = self._read_manifest()
        self._check_root()
        self._plans: OrderedDict[tuple[str, str], _RunPlan] = OrderedDict()
        self._plans_lock = threading.Lock()

    # -- manifest and the files it lists ----------------------------------------------------
    def _read_manifest(self) -> _ManifestIndex:
        """Every line checked; any damage is fatal, naming the line."""
        manifest = self._manifest
        if os.path.islink(manifest) or os.path.islink(self.path / ROOT_FILE):
            raise BadInputError(f"{manifest} or {ROOT_FILE} is a symbolic link; a bundle never holds links")
        root: ManifestEntry | None = None
        experiments: dict[str, ManifestEntry | None] = {}
        runs: dict[str, dict[str, tuple[int, int]]] = {}
        run_homes: dict[str, list[str]] = {}
        previous: str | None = None
        offset = 0
        current: tuple[str, str] | None = None
        with open(manifest, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                where = f"{manifest} line {lineno}"
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadInputError(f"{where} is not UTF-8: the manifest is damaged") from None
                entry, problem = parse_line(text)
                if problem:
                    raise BadInputError(f"{where} is invalid: {_short(problem)}; the manifest is damaged")
                try:
                    check_relpath(entry.path)
                except ValueError as e:
                    raise BadInputError(f"{where} lists an unsafe {_short(str(e))}; refusing the bundle") from None
                if previous is not None and entry.path <= previous:
                    what = "is listed twice" if entry.path == previous else "is out of path order"
                    raise BadInputError(f"{where}: {_short(entry.path)} {what}; the manifest is damaged")
                previous = entry.path
                parts = entry.path.split("/")
                if entry.path == ROOT_FILE:
                    root = entry
                elif len(parts) == 3 and parts[0] == EXPERIMENTS_DIR and parts[2] == EXPERIMENT_FILE:
                    if _is_component(parts[1]):
                        experiments[parts[1]] = entry
                elif len(parts) >= 5 and parts[0] == EXPERIMENTS_DIR and parts[2] == RUNS_DIR:
                    exp_id, run_id = parts[1], parts[3]
                    if not (_is_component(exp_id) and _is_component(run_id)):
                        continue  # a writer's temp name: never part of a bundle's units
                    experiments.setdefault(exp_id, None)
                    exp_runs = runs.setdefault(exp_id, {})
                    if current == (exp_id, run_id):
                        exp_runs[run_id] = (exp_runs[run_id][0], offset)
                    else:
                        current = (exp_id, run_id)
                        exp_runs[run_id] = (start, offset)
                        run_homes.setdefault(run_id, []).append(exp_id)
        return _ManifestIndex(root, experiments, runs, run_homes)

    def _check_root(self) -> None:
        path = self.path / ROOT_FILE
        if self._index.root is None:
            raise BadInputError(f"{path} is not listed in {self._manifest}; the manifest is damaged")
        self._read_listed(ROOT_FILE, self._index.root, BadInputError)

    def _file(self, rel: str) -> Path:
        return self.path.joinpath(*rel.split("/"))

    def _check_file(self, rel: str, size: int, error=UnitError) -> Path:
        """The regular file at rel, reached without symbolic links, of the given size."""
        path = self._file(rel)
        if os.path.realpath(path) != os.path.join(self._real_root, *rel.split("/")):
            raise error(f"{path} is a symbolic link or lies behind one; a bundle never holds links")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise error(f"{path} is listed in {MANIFEST_FILE} but missing") from None
        except OSError as e:
            raise error(f"{path} cannot be read: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is not a regular file")
        if st.st_size != size:
            raise error(
                f"{path} is {st.st_size} bytes but {MANIFEST_FILE} says {size}: the file was truncated or changed"
            )
        return path

    def _read_listed(self, rel: str, entry: ManifestEntry, error=UnitError) -> bytes:
        """A small listed file's bytes, checked against its manifest entry."""
        path = self._file(rel)
        if entry.size > MAX_DOCUMENT_BYTES:
            raise error(
                f"{path}: {MANIFEST_FILE} says it is {entry.size} bytes, more than the "
                f"{MAX_DOCUMENT_BYTES >> 20} MiB a bundle document may be"
            )
        self._check_file(rel, entry.size, error)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as f:
                data = f.read(entry.size + 1)
        except OSError as e:
            raise error(f"{path} cannot be read: {e.strerror or e}") from None
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise error(
                f"{path} does not match its sha256 in {MANIFEST_FILE}: the file was changed or damaged"
            )
        return data

    def _load_doc(self, rel: str, entry: ManifestEntry | None, schema: str) -> tuple[Path, dict]:
        path = self._file(rel)
        if entry is None:
            raise UnitError(f"{path} is not listed in {MANIFEST_FILE}")
        return path, check_doc(parse_json(self._read_listed(rel, entry), path), path, schema)

    def _run_entries(self, experiment_id: str, run_id: str) -> dict[str, ManifestEntry]:
        """{path inside the run directory: entry} from the run's manifest lines."""
        span = self._index.runs.get(experiment_id, {}).get(run_id)
        if span is None:
            return {}
        prefix = f"{EXPERIMENTS_DIR}/{experiment_id}/{RUNS_DIR}/{run_id}/"
        with open(self._manifest, "rb") as f:
            f.seek(span[0])
            data = f.read(span[1] - span[0])
        out = {}
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                entry, problem = parse_line(line)
                if problem or not entry.path.startswith(prefix):
                    raise UnitError(f"{self._manifest} changed while it was being read")
                out[entry.path[len(prefix):]] = entry
        return out

    def _check_run(self, experiment_id: str, run_id: str) -> _RunPlan:
        """The run's run.json and every file it names, checked; UnitError naming the file."""
        rel_dir = f"{EXPERIMENTS_DIR}/{experiment_id}/{RUNS_DIR}/{run_id}"
        run_json_rel = f"{rel_dir}/{RUN_FILE}"
        homes = self._index.run_homes.get(run_id, [])
        if len(homes) > 1:
            places = ", ".join(f"{EXPERIMENTS_DIR}/{e}/{RUNS_DIR}/{run_id}" for e in homes)
            raise UnitError(
                f"run id {run_id!r} has a directory in more than one experiment ({places} in {self.path}); "
                "run ids are unique, so no copy of it is imported"
            )
        entries = self._run_entries(experiment_id, run_id)
        path, doc = self._load_doc(run_json_rel, entries.get(RUN_FILE), schemas.RUN)
        run = run_from_doc(doc)
        if run.run_id != run_id or run.experiment_id != experiment_id:
            raise UnitError(f"{path} holds run {run.run_id!r} of experiment {run.experiment_id!r}, not its directory's")

        def named_file(inner: str, size: int, sha256: str, what: str) -> Path:
            entry = entries.get(inner)
            if entry is None:
                raise UnitError(f"{self._file(rel_dir + '/' + inner)} ({what} named by {path}) is not listed in {MANIFEST_FILE}")
            if (entry.size, entry.sha256) != (size, sha256):
                raise UnitError(
                    f"{self._file(rel_dir + '/' + inner)}: {MANIFEST_FILE} and {path} disagree about its size or sha256"
                )
            return self._check_file(f"{rel_dir}/{inner}", size)

        metrics = None
        m = doc["metrics"]
        if m is not None:
            try:
                check_component(m["file"], "metrics file")
            except ValueError as e:
                raise UnitError(f"{path}: {_short(str(e))}") from None
            metrics = (named_file(m["file"], m["size"], m["sha256"], "metrics"), m["size"], m["sha256"], m["points"])
        artifacts: dict[str, tuple[Path, int, str]] = {}
        for a in doc["artifacts"]:
            try:
                check_relpath(a["path"])
            except ValueError as e:
                raise UnitError(f"{path}: artifact {_short(str(e))}") from None
            if a["path"] in artifacts:
                raise UnitError(f"{path}: artifact {_short(a['path'])!r} is listed twice")
            inner = f"{ARTIFACTS_DIR}/{a['path']}"
            artifacts[a["path"]] = (named_file(inner, a["size"], a["sha256"], "artifact"), a["size"], a["sha256"])
        return _RunPlan(run, path, metrics, artifacts)

    def _plan(self, run: Run) -> _RunPlan:
        """The checked plan of a run handed out by iter_runs (for the worker threads)."""
        try:
            check_component(run.experiment_id, "experiment id")
            check_component(run.run_id, "run id")
        except ValueError as e:
            raise UnitError(str(e)) from None
        return self._checked_run(run.experiment_id, run.run_id)

    def _checked_run(self, experiment_id: str, run_id: str) -> _RunPlan:
        """_check_run, remembered for the last PLAN_CACHE_SIZE runs: a transfer asks for
        each run up to three times (is there a run at all, the sorted listing, the worker)."""
        key = (experiment_id, run_id)
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = self._check_run(experiment_id, run_id)
        with self._plans_lock:
            self._plans[key] = plan
            while len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return plan

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="bundle", uri=str(self.path), mlflow_version=self.root["source"].get("mlflow_version"))

    def source_description(self) -> StoreDescription:
        """The store the bundle was exported from."""
        s = self.root["source"]
        return StoreDescription(kind=s["kind"], uri=s["uri"], mlflow_version=s.get("mlflow_version"))

    # -- experiments -------------------------------------------------------------------
    def list_experiments(self, selection: Selection) -> Iterator[Experiment | Unreadable]:
        """Valid selected experiments (by id order), then an Unreadable for each invalid
        experiment.json that the selection would take. The experiments are those the
        manifest lists (an experiment.json, or a run directory). An unreadable one can be
        named only by its id: its name is in the damaged file."""
        names = sorted(self._index.experiments, key=lambda s: (len(s), s))
        valid: dict[str, Experiment] = {}
        bad: dict[str, Unreadable] = {}
        for name in names:
            rel = f"{EXPERIMENTS_DIR}/{name}/{EXPERIMENT_FILE}"
            try:
                path, doc = self._load_doc(rel, self._index.experiments[name], schemas.EXPERIMENT)
                exp = experiment_from_doc(doc)
                if exp.experiment_id != name:
                    raise UnitError(f"{path} holds experiment id {exp.experiment_id!r} in directory {name!r}")
            except UnitError as e:
                bad[name] = Unreadable("experiment", name, str(e))
                continue
            valid[name] = exp
        wanted: set[str] | None = None
        if selection.experiments:
            by_name = {exp.name: exp for exp in valid.values()}

            def by_id(value: str) -> Experiment | None:
                if value in bad:
                    return Experiment(experiment_id=value, name="(unreadable)")
                return valid.get(value)

            wanted = {
                pick_experiment(ref, by_id, by_name.get, f"bundle {self.path}").experiment_id
                for ref in selection.experiments
            }
        for name, exp in valid.items():
            if (wanted is None or name in wanted) and (selection.include_deleted or exp.lifecycle_stage != DELETED):
                yield exp
        for name, unreadable in bad.items():
            if wanted is None or name in wanted:
                yield unreadable

    # -- runs --------------------------------------------------------------------------
    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run | Unreadable]:
        """Oldest start_time first (runs without one last, then by id), then an
        Unreadable for each run whose run.json or files are damaged (checked here, so a
        damaged run is refused before anything of it is written)."""
        wanted = set(selection.run_ids)
        runs: list[Run] = []
        bad: list[Unreadable] = []
        for name in sorted(self._index.runs.get(experiment.experiment_id, {})):
            if wanted and name not in wanted:
                continue
            try:
                run = self._checked_run(experiment.experiment_id, name).run
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
        plan = self._plan(run)
        if plan.metrics is None:
            return
        path, size, sha256, points = plan.metrics
        try:
            actual, actual_size = sha256_file(path)
        except OSError as e:
            raise UnitError(f"{path} cannot be read: {e.strerror or e}") from None
        if (actual, actual_size) != (sha256, size):
            raise UnitError(
                f"{path} does not match its sha256 recorded in run.json and {MANIFEST_FILE}: "
                "the file is damaged, so its run is not imported"
            )
        try:
            yield from read_metrics(path, run_id=run.run_id, expected_rows=points)
        except TrackportError:
            raise
        except MetricsFileError as e:
            raise UnitError(f"{path} {e}") from None
        except Exception as e:  # noqa: BLE001 - any failure to decode is damage of this file
            raise UnitError(f"{path} cannot be read: {_short(str(e).splitlines()[0]) if str(e) else type(e).__name__}") from None

    def check_run(self, run: Run) -> None:
        """Every point decoded and every artifact byte hashed, before a sink that cannot
        take a run back writes any of it (the reads that follow check it all again)."""
        for _ in self.iter_metric_batches(run):
            pass
        for artifact in self.list_artifacts(run):
            with self.open_artifact(run, artifact.path) as stream:
                while stream.read(CHUNK_SIZE):
                    pass

    def list_artifacts(self, run: Run) -> Iterator[ArtifactFile]:
        plan = self._plan(run)
        return iter([ArtifactFile(path=p, size=size) for p, (_, size, _) in sorted(plan.artifacts.items())])

    def open_artifact(self, run: Run, path: str) -> ContextManager[BinaryIO]:
        try:
            check_relpath(path)
        except ValueError as e:
            raise UnitError(f"run {run.run_id}: artifact {_short(str(e))}") from None
        plan = self._plan(run)
        listed = plan.artifacts.get(path)
        if listed is None:
            raise UnitError(f"run {run.run_id}: artifact {path!r} is not listed in {plan.run_json}")
        target, size, sha256 = listed
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise UnitError(f"{target} cannot be opened: {e.strerror or e}") from None
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise UnitError(f"{target} is not a regular file")
        return _CheckedArtifact(f, target, size, sha256)  # type: ignore[return-value]


def _is_component(name: str) -> bool:
    try:
        check_component(name, "")
    except ValueError:
        return False
    return True
