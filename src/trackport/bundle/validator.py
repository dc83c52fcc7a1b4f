"""The checks of a bundle's units, shared by the reader (import) and verify.

Every check returns what it found and the list of its problems: the reader refuses a unit
on its first problem, verify reports all of them. A check reads only what the manifest
lists, never through a symbolic link, and holds nothing whole but a JSON document (at
most MAX_DOCUMENT_BYTES). See docs/bundle-format.md, "Reading untrusted bundles".
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from trackport._files import check_component, check_relpath, sha256_file
from trackport.domain import Experiment, Run
from trackport.errors import TrackportError
from trackport.kinds import Unit
from trackport.bundle import schemas
from trackport.bundle.documents import experiment_from_doc, loads, run_from_doc, short, unit_from_doc
from trackport.bundle.index import BundleIndex, Problem, UnitKey
from trackport.bundle.layout import (
    ARTIFACTS_DIR,
    EXPERIMENT_FILE,
    EXPERIMENTS_DIR,
    MANIFEST_FILE,
    ROOT_FILE,
    RUN_FILE,
    RUNS_DIR,
    UNIT_SUFFIX,
    UNITS_DIR,
    names_unit,
)
from trackport.bundle.manifest import ManifestEntry
from trackport.bundle.metrics_parquet import MetricsFileError, read_metrics

# A JSON document of a bundle is held whole in memory while parsed: one larger than this
# is refused before it is read.
MAX_DOCUMENT_BYTES = 256 << 20
SHA256_DIFFERS = f"does not match its sha256 in {MANIFEST_FILE}: the file was changed or damaged"


class Refused(Exception):
    """A problem met while streaming (a metric file), where no list can be returned."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


@dataclass(frozen=True)
class RunPlan:
    """A run whose run.json was read and whose files were checked against the manifest:
    what its metric file and artifacts must be (paths relative to the bundle root)."""

    run: Run
    run_json: str
    metrics: tuple[str, int, str, int] | None  # file, size, sha256, points
    artifacts: dict[str, tuple[str, int, str]]  # artifact path -> (file, size, sha256)


# -- files -----------------------------------------------------------------------------------
def file_problem(index: BundleIndex, rel: str, size: int) -> str | None:
    """Why the file at rel is not a regular file of that size reached without a symbolic
    link (not through a linked directory either); None when it is."""
    path = index.file(rel)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"is listed in {MANIFEST_FILE} but missing"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link, not a regular file; a bundle never holds links"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if os.path.realpath(path) != os.path.join(index.real_root, *rel.split("/")):
        return "lies behind a symbolic link; a bundle never holds links"
    if st.st_size != size:
        return f"is {st.st_size} bytes but {MANIFEST_FILE} says {size}: the file was truncated or changed"
    return None


def hash_problem(index: BundleIndex, rel: str, sha256: str) -> str | None:
    """Why the file's bytes (streamed) are not those of that sha256; None when they are."""
    try:
        actual, _ = sha256_file(index.file(rel))
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    return None if actual == sha256 else SHA256_DIFFERS


def _listed_bytes(index: BundleIndex, rel: str, entry: ManifestEntry) -> tuple[bytes | None, str | None]:
    """A small listed file's bytes, checked against its manifest entry: (data, None) or
    (None, what is wrong)."""
    if entry.size > MAX_DOCUMENT_BYTES:
        return None, (
            f"{MANIFEST_FILE} says it is {entry.size} bytes, more than the "
            f"{MAX_DOCUMENT_BYTES >> 20} MiB a bundle document may be"
        )
    problem = file_problem(index, rel, entry.size)
    if problem:
        return None, problem
    try:
        fd = os.open(index.file(rel), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(entry.size + 1)
    except OSError as e:
        return None, f"cannot be read: {e.strerror or e}"
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        return None, SHA256_DIFFERS
    return data, None


def _document(index: BundleIndex, rel: str, entry: ManifestEntry | None, schema: str) -> tuple[dict | None, list[str]]:
    """A listed JSON document read whole and checked: its size and sha256 against its
    manifest entry, strict JSON, its schema."""
    if entry is None:
        return None, [f"is not listed in {MANIFEST_FILE}"]
    data, problem = _listed_bytes(index, rel, entry)
    if problem:
        return None, [problem]
    try:
        doc = loads(data)  # type: ignore[arg-type]
    except ValueError as e:
        return None, [f"cannot be read as JSON: {e}"]
    errors = schemas.errors(schema, doc)
    if errors:
        return None, [f"does not match the {schema} schema: {err}" for err in errors]
    return doc, []


# -- the root descriptor ----------------------------------------------------------------------
def check_root_entry(index: BundleIndex) -> list[Problem]:
    """The root descriptor's bytes against its manifest entry (the descriptor itself is
    checked by descriptor.check_root): a bundle-wide problem."""
    if index.root_entry is None:
        return []  # read_index reported it
    _, problem = _listed_bytes(index, ROOT_FILE, index.root_entry)
    return [Problem(ROOT_FILE, problem)] if problem else []


# -- units -----------------------------------------------------------------------------------
def check_experiment(index: BundleIndex, experiment_id: str) -> tuple[Experiment | None, list[Problem]]:
    rel = f"{EXPERIMENTS_DIR}/{experiment_id}/{EXPERIMENT_FILE}"
    key = ("experiment", experiment_id)
    doc, problems = _document(index, rel, index.experiments.get(experiment_id), schemas.EXPERIMENT)
    if doc is None:
        return None, [Problem(rel, p, key) for p in problems]
    experiment = experiment_from_doc(doc)
    if experiment.experiment_id != experiment_id:
        message = f"holds experiment id {experiment.experiment_id!r}, not its directory's {experiment_id!r}"
        return None, [Problem(rel, message, key)]
    return experiment, []


def check_run(index: BundleIndex, experiment_id: str, run_id: str) -> tuple[RunPlan | None, list[Problem]]:
    """The run's run.json and every file it names. The plan holds the metric file and
    artifacts that passed; it is None when run.json itself cannot be used."""
    rel_dir = f"{EXPERIMENTS_DIR}/{experiment_id}/{RUNS_DIR}/{run_id}"
    run_json = f"{rel_dir}/{RUN_FILE}"
    key: UnitKey = ("run", run_id)
    problems: list[Problem] = []
    homes = index.run_homes.get(run_id, [])
    if len(homes) > 1:
        places = ", ".join(f"{EXPERIMENTS_DIR}/{e}/{RUNS_DIR}/{run_id}" for e in homes)
        problems.append(Problem(rel_dir, f"run id {run_id!r} has a directory in more than one experiment ({places}); "
                                         "run ids are unique, so no copy of it is imported", key))
    try:
        entries = index.run_entries(experiment_id, run_id)
    except ValueError as e:
        return None, problems + [Problem(MANIFEST_FILE, str(e), key)]
    doc, doc_problems = _document(index, run_json, entries.get(RUN_FILE), schemas.RUN)
    if doc is None:
        return None, problems + [Problem(run_json, p, key) for p in doc_problems]
    run = run_from_doc(doc)
    if run.run_id != run_id or run.experiment_id != experiment_id:
        message = f"holds run {run.run_id!r} of experiment {run.experiment_id!r}, not its directory's"
        problems.append(Problem(run_json, message, key))
        return None, problems

    def named_file(inner: str, size: int, sha256: str, what: str) -> bool:
        """Whether a file run.json names is listed as recorded and is there."""
        rel = f"{rel_dir}/{inner}"
        entry = entries.get(inner)
        if entry is None:
            problem = f"({what} named by {run_json}) is not listed in {MANIFEST_FILE}"
        elif (entry.size, entry.sha256) != (size, sha256):
            problem = f"{MANIFEST_FILE} and {run_json} disagree about its size or sha256"
        else:
            problem = file_problem(index, rel, size)
        if problem:
            problems.append(Problem(rel, problem, key))
        return problem is None

    metrics = None
    m = doc["metrics"]
    if m is not None:
        try:
            check_component(m["file"], "metrics file")
        except ValueError as e:
            problems.append(Problem(run_json, short(str(e)), key))
        else:
            if named_file(m["file"], m["size"], m["sha256"], "metrics"):
                metrics = (f"{rel_dir}/{m['file']}", m["size"], m["sha256"], m["points"])
    artifacts: dict[str, tuple[str, int, str]] = {}
    for a in _file_records(doc["artifacts"], run_json, key, "artifact", problems):
        inner = f"{ARTIFACTS_DIR}/{a['path']}"
        if named_file(inner, a["size"], a["sha256"], "artifact"):
            artifacts[a["path"]] = (f"{rel_dir}/{inner}", a["size"], a["sha256"])
    return RunPlan(run, run_json, metrics, artifacts), problems


def _file_records(records, document: str, key: UnitKey, what: str, problems: list[Problem]) -> Iterator[dict]:
    """The records of files a document names ({path, size, sha256}) whose path is safe, each
    path once; a problem of the unit for every other one."""
    seen: set[str] = set()
    for record in records:
        try:
            check_relpath(record["path"])
        except ValueError as e:
            problems.append(Problem(document, f"{what} {short(str(e))}", key))
            continue
        if record["path"] in seen:
            problems.append(Problem(document, f"{what} {short(record['path'])!r} is listed twice", key))
            continue
        seen.add(record["path"])
        yield record


def metric_batches(index: BundleIndex, plan: RunPlan) -> Iterator[pa.RecordBatch]:
    """The run's metric points, checked as they stream (column types, no nulls, only its
    run's rows, as many as run.json says); Refused on the first problem. The file's sha256
    is the caller's to check (the reader before the first batch, verify with every file)."""
    rel, _, _, points = plan.metrics  # type: ignore[misc]
    key = ("run", plan.run.run_id)
    try:
        yield from read_metrics(index.file(rel), run_id=plan.run.run_id, expected_rows=points)
    except TrackportError:
        raise
    except MetricsFileError as e:
        raise Refused(Problem(rel, str(e), key)) from None
    except Exception as e:  # noqa: BLE001 - any failure to decode is damage of this file
        reason = short(str(e).splitlines()[0]) if str(e) else type(e).__name__
        raise Refused(Problem(rel, f"cannot be read: {reason}", key)) from None


@dataclass(frozen=True)
class UnitPlan:
    """A generic unit whose document was read and whose files were checked against the
    manifest: its files (path inside its folder -> file, size, sha256)."""

    unit: Unit
    files: dict[str, tuple[str, int, str]]


def check_unit(
    index: BundleIndex, experiment_id: str | None, kind: str, name: str, body_schema: dict | None
) -> tuple[UnitPlan | None, list[Problem]]:
    """A generic unit's document (by its file name, layout.unit_name): read and checked
    like every document, its envelope naming the unit its path names, its body against its
    kind's schema when the kind has one (a kind this trackport does not know has none: its
    bodies are not checked), and the files it names (the unit's folder beside it) as a
    run's artifacts are."""
    home = "" if experiment_id is None else f"{EXPERIMENTS_DIR}/{experiment_id}/"  # None: the workspace's
    rel = f"{home}{UNITS_DIR}/{kind}/{name}{UNIT_SUFFIX}"
    key = (kind, name)
    entry = index.units.get(experiment_id, {}).get(kind, {}).get(name)
    doc, problems = _document(index, rel, entry, schemas.UNIT)
    if doc is None:
        return None, [Problem(rel, p, key) for p in problems]
    if doc["kind"] != kind or not names_unit(name, doc["id"]) or doc["experiment_id"] != experiment_id:
        return None, [Problem(rel, f"holds {short(doc['kind'], 80)} {short(doc['id'], 80)!r} of experiment "
                                   f"{short(str(doc['experiment_id']), 80)!r}, not the unit its path names", key)]
    if body_schema is not None:
        errors = schemas.body_errors(body_schema, doc["body"])
        if errors:
            return None, [Problem(rel, f"body does not match the schema of kind {kind!r}: {e}", key) for e in errors]
    listed = index.unit_files.get((experiment_id, kind, name), {})
    folder = f"{home}{UNITS_DIR}/{kind}/{name}"
    files: dict[str, tuple[str, int, str]] = {}
    for f in _file_records(doc.get("files") or (), rel, key, "file", problems):
        file_rel = f"{folder}/{f['path']}"
        listed_entry = listed.get(f["path"])
        if listed_entry is None:
            problem = f"(a file named by {rel}) is not listed in {MANIFEST_FILE}"
        elif (listed_entry.size, listed_entry.sha256) != (f["size"], f["sha256"]):
            problem = f"{MANIFEST_FILE} and {rel} disagree about its size or sha256"
        else:
            problem = file_problem(index, file_rel, f["size"])
        if problem:
            problems.append(Problem(file_rel, problem, key))
        else:
            files[f["path"]] = (file_rel, f["size"], f["sha256"])
    return UnitPlan(unit_from_doc(doc), files), problems
