"""The checks of a bundle's units, shared by the reader (import) and verify.

Every check returns what it found and the list of its problems: the reader refuses a unit
on its first problem, verify reports all of them. A check reads only what the manifest
lists, never through a symbolic link, and holds nothing whole but a JSON document (at
most MAX_DOCUMENT_BYTES). See docs/bundle-format.md, "Reading untrusted bundles".
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import pyarrow as pa

from trackport._files import check_component, check_relpath
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
class Stored:
    """A file a run.json names, checked: the bundle (a link of its chain, format 1.4) that
    holds it, its path there, its size and sha256, and (a part of a metric history) its points."""

    index: BundleIndex
    rel: str
    size: int
    sha256: str
    points: int = 0

    @property
    def where(self) -> str:
        return self.index.files.where(self.rel)


@dataclass(frozen=True)
class RunPlan:
    """A run whose run.json was read and whose files were checked against the manifest
    (of the link holding each one): what its metric history is made of (its parts, oldest
    first; one for a history stored whole) and its artifacts."""

    run: Run
    run_json: str
    metrics: list[Stored] | None
    artifacts: dict[str, Stored]  # artifact path -> where it is
    doc: dict  # run.json as read (its records, its fingerprint): what an increment refers to
    index: BundleIndex | None = None  # the bundle's own


# -- files -----------------------------------------------------------------------------------
def file_problem(index: BundleIndex, rel: str, size: int) -> str | None:
    """Why the file at rel is not a regular file of that size reached without a symbolic
    link (not through a linked directory either); None when it is."""
    return index.files.problem(rel, size)


def hash_problem(index: BundleIndex, rel: str, sha256: str) -> str | None:
    """Why the file's bytes (streamed) are not those of that sha256; None when they are."""
    try:
        actual = index.files.sha256(rel)
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
        data = index.files.head(rel, entry.size + 1)
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


def check_run(
    index: BundleIndex, experiment_id: str, run_id: str, links: Mapping[str, BundleIndex] | None = None,
    *, link_files: bool = True,
) -> tuple[RunPlan | None, list[Problem]]:
    """The run's run.json and every file it names. The plan holds the metric file and
    artifacts that passed; it is None when run.json itself cannot be used. links: the
    earlier links of the bundle's chain by bundle id, where files a record names by its
    `link` are (at the same path as here, listed in that link's manifest as recorded).
    link_files=False: the files in links are not looked at (verify checks each link itself)."""
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
    elsewhere: dict[str, dict[str, ManifestEntry]] = {}  # link id -> its entries of this run

    def named_file(inner: str, record: dict, what: str, points: int = 0) -> Stored | None:
        """The file a record of run.json names, when it is listed as recorded and is there
        (in this bundle, or in the link of the chain the record names)."""
        rel = f"{rel_dir}/{inner}"
        home, where, link = index, rel, record.get("link")
        if link is not None:
            home = (links or {}).get(link)  # type: ignore[assignment]
            if home is None:
                problems.append(Problem(run_json, f"its {what} {short(inner)!r} is in bundle {short(link, 40)!r}, "
                                                  "which is no earlier link of this bundle's chain", key))
                return None
            where = f"{rel} in the earlier link {home.root}"
            if link not in elsewhere:
                try:
                    elsewhere[link] = home.run_entries(experiment_id, run_id)
                except ValueError as e:
                    problems.append(Problem(run_json, f"{where}: {e}", key))
                    return None
        entry = (entries if link is None else elsewhere[link]).get(inner)
        problem = None
        if entry is None:
            problem = f"({what} named by {run_json}) is not listed in {MANIFEST_FILE}"
        elif (entry.size, entry.sha256) != (record["size"], record["sha256"]):
            problem = f"{MANIFEST_FILE} and {run_json} disagree about its size or sha256"
        elif link is None or link_files:
            problem = file_problem(home, rel, record["size"])
        if problem:
            problems.append(Problem(rel, problem, key) if link is None else Problem(run_json, f"{where} {problem}", key))
            return None
        return Stored(home, rel, record["size"], record["sha256"], points)

    metrics = None
    m = doc["metrics"]
    if m is not None:
        parts = [*(m.get("earlier") or ()), m]  # oldest first; the last holds what the others do not
        last = m["points"] - sum(p["points"] for p in parts[:-1])
        stored: list[Stored | None] = []
        if last < 1:
            problems.append(Problem(run_json, "metrics: points is not more than its earlier parts hold", key))
        for n, part in enumerate(parts if last >= 1 else ()):
            try:
                check_component(part["file"], "metrics file")
            except ValueError as e:
                problems.append(Problem(run_json, short(str(e)), key))
                stored.append(None)
                continue
            stored.append(named_file(part["file"], part, "metrics", part["points"] if n < len(parts) - 1 else last))
        if stored and None not in stored:
            metrics = stored
    artifacts: dict[str, Stored] = {}
    for a in _file_records(doc["artifacts"], run_json, key, "artifact", problems):
        found = named_file(f"{ARTIFACTS_DIR}/{a['path']}", a, "artifact")
        if found is not None:
            artifacts[a["path"]] = found
    return RunPlan(run, run_json, metrics, artifacts, doc, index), problems


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


def metric_batches(plan: RunPlan, opened: list | None = None) -> Iterator[pa.RecordBatch]:
    """The run's metric points, part after part, checked as they stream (column types, no
    nulls, only its run's rows, as many as run.json says); Refused on the first problem.
    The files' sha256 are the caller's to check (the reader before the first batch, verify
    with every file). opened: the parts as files the caller opened already."""
    for n, part in enumerate(plan.metrics or ()):
        try:
            if opened is not None:
                yield from read_metrics(opened[n], run_id=plan.run.run_id, expected_rows=part.points)
                continue
            with part.index.files.open(part.rel) as f:
                yield from read_metrics(f, run_id=plan.run.run_id, expected_rows=part.points)
        except TrackportError:
            raise
        except MetricsFileError as e:
            raise Refused(_part_problem(plan, part, str(e))) from None
        except Exception as e:  # noqa: BLE001 - any failure to decode is damage of this file
            reason = short(str(e).splitlines()[0]) if str(e) else type(e).__name__
            raise Refused(_part_problem(plan, part, f"cannot be read: {reason}")) from None


def _part_problem(plan: RunPlan, part: Stored, message: str) -> Problem:
    """A problem of a part of a history: about its file in this bundle, or about run.json
    naming the file of an earlier link."""
    if part.index is plan.index:
        return Problem(part.rel, message, ("run", plan.run.run_id))
    return Problem(plan.run_json, f"{part.where} (in an earlier link of the chain) {message}", ("run", plan.run.run_id))


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
