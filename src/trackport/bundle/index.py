"""The bundle's table of contents: manifest.jsonl read once, strictly, and indexed by
experiment, run and unit document; and the Problem every check of a bundle reports.

The reader (import) and verify both start from this index and check documents with the
same code (bundle/validator.py): the reader raises the first problem, verify reports
them all, so a bundle passes `verify --level full` exactly when import takes all of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from trackport.kinds import BUILT_IN
from trackport.bundle.layout import (
    EXPERIMENT_FILE,
    EXPERIMENTS_DIR,
    MANIFEST_FILE,
    ROOT_FILE,
    RUNS_DIR,
    SPANS_FILE,
    UNITS_DIR,
    is_component,
    unit_id_of,
)
from trackport.bundle.documents import short
from trackport.bundle.location import BundleFiles, LocalFiles
from trackport.bundle.manifest import ManifestEntry, parse_line

UnitKey = tuple[str, str]  # (kind name, id): ("run", "<run id>"), ("experiment", "1"); a generic
# kind's units by their file name (layout.unit_name): ("note", "n1"), ("model_version", "churn%2F3")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a bundle: the file (or directory) it is about, relative to the
    bundle root, and what is wrong, worded to follow "<path>: ". `unit` is the unit it
    costs (a reader refuses that unit alone); None when it is about the bundle as a whole
    (a reader refuses the bundle)."""

    path: str
    message: str
    unit: UnitKey | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def in_bundle(self, root: Path) -> str:
        """One line naming the file by its full path, for the reader's errors (quoted when
        the path holds a newline or another unprintable character: it comes from the bundle)."""
        where = str(root.joinpath(*self.path.split("/")))
        return f"{where if where.isprintable() else repr(where)}: {self.message}"


def unit_of(rel: str) -> UnitKey | None:
    """The unit a listed file belongs to, by its path; None for the bundle's own files
    (root descriptor, transfer/) and for names no unit can have (a writer's temp name)."""
    parts = rel.split("/")
    if parts[0] == UNITS_DIR:  # a unit of the workspace
        return _generic_unit(parts[1:])
    if len(parts) < 3 or parts[0] != EXPERIMENTS_DIR or not is_component(parts[1]):
        return None
    if len(parts) == 3 and parts[2] == EXPERIMENT_FILE:
        return ("experiment", parts[1])
    if len(parts) >= 5 and parts[2] == RUNS_DIR and is_component(parts[3]):
        return ("run", parts[3])
    if parts[2] == UNITS_DIR:
        return _generic_unit(parts[3:])
    return None


def _generic_unit(parts: list[str]) -> UnitKey | None:
    """<kind>/<name>.json (a document) or <kind>/<name>/<path> (one of its files). A folder
    named after a built-in kind is no generic kind's: runs are not documents."""
    if len(parts) < 2 or not is_component(parts[0]) or parts[0] in BUILT_IN:
        return None
    name = unit_id_of(parts[1]) if len(parts) == 2 else (parts[1] if is_component(parts[1]) else None)
    return None if name is None else (parts[0], name)


@dataclass
class BundleIndex:
    """What is kept of manifest.jsonl: the entries of the root descriptor, of every
    experiment.json and unit document, and, per run directory, where its lines are in the
    file (one span when the manifest is sorted, as a run's lines are then contiguous), so
    memory grows with the number of runs and units, not of files."""

    root: Path
    bundle_id: str | None = None  # the root descriptor's (format 1.4): how links of a chain name it
    root_entry: ManifestEntry | None = None
    experiments: dict[str, ManifestEntry | None] = field(default_factory=dict)  # id -> experiment.json entry
    runs: dict[str, dict[str, list[tuple[int, int]]]] = field(default_factory=dict)  # exp -> run -> spans
    run_homes: dict[str, list[str]] = field(default_factory=dict)  # run id -> experiments with a directory of it
    units: dict[str | None, dict[str, dict[str, ManifestEntry]]] = field(default_factory=dict)  # exp (None: workspace) -> kind -> name -> entry
    # The files of units of kinds with files: (exp or None, kind, name) -> {path inside its folder: entry}
    unit_files: dict[tuple[str | None, str, str], dict[str, ManifestEntry]] = field(default_factory=dict)
    span_files: dict[str, ManifestEntry] = field(default_factory=dict)  # experiments/<E>/spans.parquet (1.5) -> entry
    problems: list[Problem] = field(default_factory=list)  # of the manifest itself: all bundle-wide
    files: BundleFiles | None = None  # where the listed files are read (bundle/location.py); root by default

    def __post_init__(self) -> None:
        if self.files is None:
            self.files = LocalFiles(self.root)

    @property
    def manifest(self) -> Path:
        """The manifest, a local file (for a bundle on S3, its downloaded copy)."""
        return self.root / MANIFEST_FILE

    def unit_kinds(self) -> list[str]:
        return sorted({name for by_kind in self.units.values() for name in by_kind})

    def entries(self) -> Iterator[ManifestEntry]:
        """Every valid line of the manifest again, in file order (streamed)."""
        with open(self.manifest, "rb") as f:
            for raw in f:
                if raw.strip():
                    entry, _ = parse_line(raw)
                    if entry is not None:
                        yield entry

    def run_entries(self, experiment_id: str, run_id: str) -> dict[str, ManifestEntry]:
        """{path inside the run directory: entry} from the run's manifest lines. ValueError
        when they are not what the index saw (the manifest changed since)."""
        prefix = f"{EXPERIMENTS_DIR}/{experiment_id}/{RUNS_DIR}/{run_id}/"
        out: dict[str, ManifestEntry] = {}
        with open(self.manifest, "rb") as f:
            for start, end in self.runs.get(experiment_id, {}).get(run_id, ()):
                f.seek(start)
                for raw in f.read(end - start).splitlines():
                    if not raw.strip():
                        continue
                    entry, problem = parse_line(raw)
                    if problem or not entry.path.startswith(prefix):
                        raise ValueError(f"{MANIFEST_FILE} changed while it was being read; run the command again")
                    out.setdefault(entry.path[len(prefix):], entry)
        return out


def read_index(root: Path, bundle_id: str | None = None, files: BundleFiles | None = None) -> BundleIndex:
    """Index root/manifest.jsonl, checking every line (UTF-8, strict JSON, fields, a safe
    path, strict path order). Lines with a problem are left out of the index and their
    problems recorded in it; all of them are bundle-wide. files: where the listed files
    are (default: under root)."""
    index = BundleIndex(root, bundle_id, files=files)
    manifest = index.manifest
    if os.path.islink(manifest):
        index.problems.append(Problem(MANIFEST_FILE, "is a symbolic link; a bundle never holds links"))
        return index
    previous: str | None = None
    current: tuple[str, str] | None = None  # the run whose lines come one after the other
    offset = 0
    with open(manifest, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            entry, problem = parse_line(raw)
            if problem:
                index.problems.append(Problem(MANIFEST_FILE, f"line {lineno} {problem}"))
                continue
            if previous is not None and entry.path <= previous:
                what = "is listed twice" if entry.path == previous else "is out of path order"
                index.problems.append(
                    Problem(MANIFEST_FILE, f"line {lineno}: {short(entry.path)!r} {what}; the manifest is damaged")
                )
                if entry.path == previous:
                    continue
            previous = entry.path
            current = _add(index, entry, start, offset, current)
    if index.root_entry is None and not index.problems:  # else its line may be a damaged one
        index.problems.append(Problem(ROOT_FILE, f"is not listed in {MANIFEST_FILE}; the manifest is damaged"))
    return index


def _add(index: BundleIndex, entry: ManifestEntry, start: int, end: int, current: tuple[str, str] | None):
    """Index one valid line; returns the run it belongs to (None when it is no run's)."""
    if entry.path == ROOT_FILE:
        index.root_entry = entry
        return None
    unit = unit_of(entry.path)
    if unit is None:
        parts = entry.path.split("/")
        if len(parts) == 3 and parts[0] == EXPERIMENTS_DIR and parts[2] == SPANS_FILE and is_component(parts[1]):
            index.span_files[entry.path] = entry
        return None
    parts = entry.path.split("/")
    kind, unit_id = unit
    if parts[0] == UNITS_DIR or parts[2] == UNITS_DIR:
        exp_id = None if parts[0] == UNITS_DIR else parts[1]
        if exp_id is not None:
            index.experiments.setdefault(exp_id, None)
        inside = parts[3:] if exp_id is None else parts[5:]
        if inside:  # one of the unit's files
            index.unit_files.setdefault((exp_id, kind, unit_id), {}).setdefault("/".join(inside), entry)
        else:
            index.units.setdefault(exp_id, {}).setdefault(kind, {}).setdefault(unit_id, entry)
        return None
    exp_id = parts[1]
    index.experiments.setdefault(exp_id, None)
    if kind == "experiment":
        index.experiments[exp_id] = entry
        return None
    spans = index.runs.setdefault(exp_id, {}).setdefault(unit_id, [])
    if current == (exp_id, unit_id) and spans:
        spans[-1] = (spans[-1][0], end)
    else:
        spans.append((start, end))
        homes = index.run_homes.setdefault(unit_id, [])
        if exp_id not in homes:
            homes.append(exp_id)
    return (exp_id, unit_id)
