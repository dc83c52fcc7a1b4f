"""verify_bundle: check a bundle against its manifest at one of three levels.

fast      root descriptor valid and of a known major version; manifest present and
          valid; every listed file present with the listed size.
complete  fast, plus no file present that the manifest does not list.
full      complete, plus the sha256 of every file, every document checked as the reader
          checks it (strict JSON, schema, run.json against the manifest, unit documents),
          every Parquet file read through, and the transfer/ state files.

The manifest index and the document checks are the reader's own (bundle/index.py,
bundle/validator.py): where the reader refuses on the first problem, verify reports every
one, so `full` passes exactly when an import would take the whole bundle.

Damage is reported, never raised; only a missing path or a directory that is not a
bundle at all raises BadInputError.
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from trackport import kinds
from trackport.errors import BadInputError
from trackport.bundle import chain, schemas, spans, validator
from trackport.bundle.descriptor import check_root
from trackport.bundle.documents import loads
from trackport.bundle.index import BundleIndex, Problem, read_index, unit_of
from trackport.bundle.location import BundleFiles
from trackport.bundle.layout import MANIFEST_FILE, ROOT_FILE, TRANSFER_DIR, natural_key, unit_id_from_name
from trackport.bundle.validator import Refused

CHECK_THREADS = 8
LEVELS = ("fast", "complete", "full")
__all__ = ["LEVELS", "Problem", "VerifyReport", "verify_bundle"]


@dataclass
class VerifyReport:
    path: Path
    level: str
    format_version: str | None = None
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    _reported: set[Problem] = field(default_factory=set, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: str, message: str) -> None:
        self.extend([Problem(path, message)])

    def extend(self, problems: list[Problem]) -> None:
        """Add problems not reported yet: a file check and the check of the unit it belongs
        to find the same damage (a missing file) in the same words."""
        for problem in problems:
            if problem not in self._reported:
                self._reported.add(problem)
                self.problems.append(problem)

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "level": self.level,
            "format_version": self.format_version,
            "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked,
            "problems": [
                {"path": p.path, "message": p.message, "unit": list(p.unit) if p.unit else None} for p in self.problems
            ],
        }


def verify_bundle(path: str | os.PathLike, level: str = "full", files: BundleFiles | None = None, place=None) -> VerifyReport:
    """path: the bundle's directory (for a bundle on S3, the local copy of its root
    descriptor and manifest, with files reading the rest from the bucket, and place where
    the links of its chain lie)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    root = Path(path).absolute()
    if not root.exists():
        raise BadInputError(f"{root} does not exist")
    if not root.is_dir():
        raise BadInputError(f"{root} is not a directory, so not a trackport bundle")
    has_manifest = (root / MANIFEST_FILE).is_file()
    if not os.path.lexists(root / ROOT_FILE) and not has_manifest:
        raise BadInputError(f"{root} is not a trackport bundle (no {ROOT_FILE}, no {MANIFEST_FILE})")
    report = VerifyReport(path=root, level=level)
    if not _check_root_descriptor(root, report):
        return report  # another format or major version: the rest cannot be interpreted
    if not has_manifest:
        report.add(MANIFEST_FILE, "missing: the bundle is incomplete (the export did not finish); re-run the export")
        return report
    links = _chain(root, report, place)
    _verify_tree(root, level, report, chain.by_id(links), files)
    for n, link in enumerate(links):  # each earlier link on its own, at the same level
        inner = VerifyReport(path=link.path, level=level)
        _verify_tree(link.path, level, inner, chain.by_id(links[n + 1:]), link.index.files)
        report.files_checked += inner.files_checked
        report.bytes_checked += inner.bytes_checked
        if inner.problems:
            first = inner.problems[0]
            more = f" (and {len(inner.problems) - 1} more; run 'trackport bundle verify {link.path}')" if len(inner.problems) > 1 else ""
            report.add(str(link.path), f"link {link.number} of the chain (bundle {link.bundle_id}) is damaged: {first}{more}")
    return report


def _chain(root: Path, report: VerifyReport, place=None) -> list:
    """The earlier links of an increment; a link missing or unreadable is one problem naming
    it (the links before it cannot be reached, so they are not checked)."""
    doc = check_root(root).doc
    if doc is None or doc.get("previous") is None:
        return []
    found: list = []
    try:
        chain.earlier_links(root, doc, check_files=False, into=found, place=place)
    except chain.LinkError as e:
        report.add(str(e.where), e.problem)
    return found


def _verify_tree(root: Path, level: str, report: VerifyReport, links: dict, files: BundleFiles | None = None) -> None:
    """One bundle's own files and documents (those of an increment naming files of its links)."""
    index = read_index(root, files=files)
    report.extend(index.problems)
    report.extend(validator.check_root_entry(index))
    listed = _check_listed_files(index, level, report)
    if level in ("complete", "full"):
        _check_unlisted_files(index, listed, report)
    if level == "full":
        _check_documents(index, report, links)
        _check_transfer_files(index, report)


def _check_root_descriptor(root: Path, report: VerifyReport) -> bool:
    """Phase 1, the root descriptor; False when the bundle is not of a format and major
    version this trackport reads."""
    if not os.path.lexists(root / ROOT_FILE):
        report.add(ROOT_FILE, "missing")
        return True
    check = check_root(root)
    if check.doc is not None:
        report.format_version = check.doc.get("format_version")
    for message in check.problems:
        report.add(ROOT_FILE, message)
    return not check.foreign


def _check_listed_files(index: BundleIndex, level: str, report: VerifyReport) -> set[str]:
    """Phase 2, every listed file present, a regular file without links, of the listed
    size and (full) sha256, checked on CHECK_THREADS threads (hashing and reads release the
    GIL; on S3 each file is a request), a window of files at a time, reported in manifest
    order. Returns the listed paths."""
    listed: set[str] = set()

    def check(entry) -> str | None:
        problem = validator.file_problem(index, entry.path, entry.size)
        if problem is None and level == "full":
            problem = validator.hash_problem(index, entry.path, entry.sha256)
        return problem

    def unique():
        for entry in index.entries():
            if entry.path not in listed:  # a repeated line: read_index reported it
                listed.add(entry.path)
                yield entry

    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        for window in _windows(unique(), 4 * CHECK_THREADS):
            for entry, problem in zip(window, pool.map(check, window)):
                report.files_checked += 1
                if problem:
                    report.extend([Problem(entry.path, problem, unit_of(entry.path))])
                else:
                    report.bytes_checked += entry.size
    return listed


def _windows(items, size: int):
    window = []
    for item in items:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def _check_unlisted_files(index: BundleIndex, listed: set[str], report: VerifyReport) -> None:
    """Phase 3 (complete), nothing present that the manifest does not list."""
    for rel, kind in index.files.unlisted(listed):
        report.add(rel, f"{kind} present but not listed in the manifest")


def _check_documents(index: BundleIndex, report: VerifyReport, links: dict) -> None:
    """Phase 4 (full), every unit checked as the reader checks it before an import takes
    it, and every metric file read through."""
    for experiment_id in index.experiments:
        report.extend(validator.check_experiment(index, experiment_id)[1])
    for experiment_id, runs in index.runs.items():
        for run_id in runs:
            plan, problems = validator.check_run(index, experiment_id, run_id, links, link_files=False)
            report.extend(problems)
            if plan is not None and plan.metrics is not None:
                own = dataclasses.replace(plan, metrics=[p for p in plan.metrics if p.index is index])  # links: their own check
                try:
                    for _ in validator.metric_batches(own):
                        pass
                except Refused as e:
                    report.extend([e.problem])
    for experiment_id, by_kind in index.units.items():
        for kind_name, units in by_kind.items():
            schema = kinds.kind(kind_name).schema  # None for a kind this trackport does not know
            ordered = sorted(units, key=lambda u: natural_key(unit_id_from_name(u)))  # as the reader lists them
            checked = ((u, *validator.check_unit(index, experiment_id, kind_name, u, schema)) for u in ordered)
            if kind_name == kinds.TRACE.name and experiment_id is not None:  # and their spans file, read through (1.5)
                checked = spans.attach(index, experiment_id, checked, schema)
            for _, _, problems in checked:
                report.extend(problems)


def _jsonl_schema_for(rel: str) -> str | None:
    if rel.startswith(TRANSFER_DIR + "/") and rel.endswith(".jsonl"):
        name = rel.rsplit("/", 1)[-1]
        if name.startswith("idmap"):
            return schemas.IDMAP_ENTRY
        if name.startswith("ledger"):
            return schemas.LEDGER_ENTRY
        if name.startswith("transfers"):
            return schemas.TRANSFER_EVENT
    return None


def _check_transfer_files(index: BundleIndex, report: VerifyReport) -> None:
    """Phase 5 (full), the engine's state files in transfer/, line by line (strict JSON,
    their schemas). The reader does not read them: a bundle is imported by its units."""
    for entry in index.entries():
        schema = _jsonl_schema_for(entry.path)
        if schema is None or validator.file_problem(index, entry.path, entry.size):
            continue  # not a state file, or reported in phase 2
        with index.files.open(entry.path) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    doc = loads(raw)
                except ValueError as e:
                    report.add(entry.path, f"line {lineno} is not JSON: {e}")
                    continue
                for err in schemas.errors(schema, doc, limit=1):
                    report.add(entry.path, f"line {lineno} does not match the {schema} schema: {err}")
