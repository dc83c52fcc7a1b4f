"""verify_bundle: check a bundle against its manifest at one of three levels.

fast      root descriptor valid and of a known major version; manifest present and
          valid; every listed file present with the listed size.
complete  fast, plus no file present that the manifest does not list.
full      complete, plus the sha256 of every file, every JSON document against its
          schema, and every Parquet file read through.

Damage is reported, never raised; only a missing path or a directory that is not a
bundle at all raises BadInputError.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from trackport.errors import BadInputError
from trackport.bundle import schemas
from trackport.bundle.descriptor import format_problem
from trackport.bundle.layout import (
    EXPERIMENT_FILE,
    EXPERIMENTS_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    ROOT_FILE,
    RUN_FILE,
    TRANSFER_DIR,
    UNLISTED,
    check_relpath,
    sha256_file,
    walk_files,
)
from trackport.bundle.manifest import ManifestEntry, parse_line, run_dir_key
from trackport.bundle.metrics_parquet import check_metrics_file

LEVELS = ("fast", "complete", "full")


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the bundle root
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class VerifyReport:
    path: Path
    level: str
    format_version: str | None = None
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "level": self.level,
            "format_version": self.format_version,
            "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked,
            "problems": [{"path": p.path, "message": p.message} for p in self.problems],
        }


def _json_schema_for(rel: str) -> str | None:
    name = rel.rsplit("/", 1)[-1]
    if rel == ROOT_FILE:
        return schemas.BUNDLE
    if rel.startswith(EXPERIMENTS_DIR + "/") and run_dir_key(rel) is None and name == EXPERIMENT_FILE:
        return schemas.EXPERIMENT
    split = run_dir_key(rel)
    if split is not None and split[1] == RUN_FILE:
        return schemas.RUN
    return None


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


def _check_documents(root: Path, rel: str, report: VerifyReport) -> None:
    """Schema checks (full level) for JSON and JSONL files whose kind we know."""
    schema = _json_schema_for(rel)
    if schema:
        try:
            with open(root / rel, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            report.add(rel, f"not readable as JSON: {e}")
            return
        for err in schemas.errors(schema, doc)[:5]:
            report.add(rel, f"does not match the {schema} schema: {err}")
        if schema == schemas.RUN and isinstance(doc, dict) and isinstance(doc.get("metrics"), dict):
            points = doc["metrics"].get("points")
            mfile = doc["metrics"].get("file", METRICS_FILE)
            mrel = rel.rsplit("/", 1)[0] + "/" + str(mfile)
            rows, problems = check_metrics_file(root / mrel) if (root / mrel).is_file() else (None, [])
            for p in problems:
                report.add(mrel, p)
            if rows is not None and not problems and rows != points:
                report.add(mrel, f"holds {rows} points but {rel} says {points}")
        return
    schema = _jsonl_schema_for(rel)
    if schema:
        try:
            with open(root / rel, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except ValueError as e:
                        report.add(rel, f"line {lineno} is not JSON: {e}")
                        continue
                    err = schemas.first_error(schema, doc)
                    if err:
                        report.add(rel, f"line {lineno} does not match the {schema} schema: {err}")
        except (OSError, UnicodeDecodeError) as e:
            report.add(rel, f"not readable: {e}")


def verify_bundle(path: str | os.PathLike, level: str = "full") -> VerifyReport:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    root = Path(path).absolute()
    if not root.exists():
        raise BadInputError(f"{root} does not exist")
    if not root.is_dir():
        raise BadInputError(f"{root} is not a directory, so not a trackport bundle")
    has_root = (root / ROOT_FILE).is_file()
    has_manifest = (root / MANIFEST_FILE).is_file()
    if not has_root and not has_manifest:
        raise BadInputError(f"{root} is not a trackport bundle (no {ROOT_FILE}, no {MANIFEST_FILE})")
    report = VerifyReport(path=root, level=level)

    # 1. root descriptor
    if has_root:
        try:
            with open(root / ROOT_FILE, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            report.add(ROOT_FILE, f"not readable as JSON: {e}")
            doc = None
        if doc is not None:
            problem = format_problem(doc, Path(ROOT_FILE))
            if problem:
                report.add(ROOT_FILE, problem[0].removeprefix(f"{ROOT_FILE}: "))
                return report  # the rest cannot be interpreted
            report.format_version = doc.get("format_version")
            for err in schemas.errors(schemas.BUNDLE, doc)[:5]:
                report.add(ROOT_FILE, f"does not match the bundle schema: {err}")
            if doc.get("counts") is None and has_manifest:
                report.add(ROOT_FILE, "counts are null although the manifest exists")
    else:
        report.add(ROOT_FILE, "missing")

    # 2. manifest
    if not has_manifest:
        report.add(
            MANIFEST_FILE,
            "missing: the bundle is incomplete (the export did not finish); re-run the export",
        )
        return report
    listed: dict[str, ManifestEntry] = {}
    previous = None
    with open(root / MANIFEST_FILE, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            entry, problem = parse_line(line)
            if problem:
                report.add(MANIFEST_FILE, f"line {lineno} is invalid: {problem}")
                continue
            try:
                check_relpath(entry.path)
            except ValueError as e:
                report.add(MANIFEST_FILE, f"line {lineno}: unsafe {e}")
                continue
            if entry.path in listed:
                report.add(MANIFEST_FILE, f"line {lineno}: {entry.path} is listed twice")
            elif previous is not None and entry.path < previous:
                report.add(MANIFEST_FILE, f"line {lineno}: {entry.path} is out of path order")
            listed[entry.path] = entry
            previous = entry.path

    # 3. every listed file present with its size (and hash, for full)
    real_root = os.path.realpath(root)
    for rel, entry in listed.items():
        p = root / rel
        try:
            st = os.stat(p, follow_symlinks=False)
        except FileNotFoundError:
            report.add(rel, "listed in the manifest but missing")
            continue
        except OSError as e:
            report.add(rel, f"cannot be read: {e.strerror or e}")
            continue
        if not os.path.isfile(p) or os.path.islink(p):
            report.add(rel, "listed in the manifest but is not a regular file")
            continue
        if os.path.realpath(p) != os.path.join(real_root, *rel.split("/")):
            report.add(rel, "reached through a symbolic link (a bundle never holds links)")
            continue
        report.files_checked += 1
        if st.st_size != entry.size:
            report.add(rel, f"size is {st.st_size} bytes, {MANIFEST_FILE} says {entry.size} (one of the two is damaged)")
            continue
        if level == "full":
            try:
                sha, size = sha256_file(p)
            except OSError as e:
                report.add(rel, f"cannot be read: {e.strerror or e}")
                continue
            report.bytes_checked += size
            if sha != entry.sha256:
                report.add(rel, f"content changed: sha256 differs from {MANIFEST_FILE} (one of the two is damaged)")
            _check_documents(root, rel, report)
        else:
            report.bytes_checked += st.st_size

    # 4. nothing present that the manifest does not list
    if level in ("complete", "full"):
        for rel, entry in walk_files(root):
            if rel == MANIFEST_FILE or rel in listed or rel in UNLISTED:
                continue
            kind = "symbolic link" if entry.is_symlink() else "file"
            report.add(rel, f"{kind} present but not listed in the manifest")
    return report
