"""manifest.jsonl: one {"path","sha256","size"} line per file of the bundle, sorted by
path, written last. Building it streams over the tree; sha256 values already recorded in
a run.json (metrics.parquet, artifacts) are reused when the file size still agrees.

`parse_line` is the one parser of a manifest line: the reader, verify and the index all
see a line the same way.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from trackport._files import atomic_open, check_relpath, fsync_dir, sha256_file
from trackport.bundle.documents import loads, short
from trackport.bundle.layout import (
    ARTIFACTS_DIR,
    EXPERIMENTS_DIR,
    MANIFEST_FILE,
    RUN_FILE,
    RUNS_DIR,
    UNLISTED,
    walk_files,
)


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    size: int
    sha256: str

    def to_line(self) -> str:
        return json.dumps(
            {"path": self.path, "sha256": self.sha256, "size": self.size},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )


_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_line(raw: bytes) -> tuple[ManifestEntry | None, str | None]:
    """(entry, None), or (None, what is wrong with the line) to follow "line <n> ".

    Strict as every bundle document is read (UTF-8, no NaN/Infinity, no key twice), and
    the checks of manifest-entry.schema.json written out by hand (a manifest has a line
    per file, all checked before anything is imported), and a safe path.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "is not UTF-8: the manifest is damaged"
    try:
        doc = loads(text)
    except ValueError as e:
        return None, f"is invalid: not JSON ({e}); the manifest is damaged"
    if not isinstance(doc, dict):
        return None, "is invalid: (top): not a JSON object; the manifest is damaged"
    path, size, sha = doc.get("path"), doc.get("size"), doc.get("sha256")
    if not isinstance(path, str) or not path:
        return None, "is invalid: path: missing or not a non-empty string; the manifest is damaged"
    if type(size) is not int or size < 0:
        return None, "is invalid: size: missing or not a non-negative integer; the manifest is damaged"
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        return None, "is invalid: sha256: missing or not 64 lowercase hex digits; the manifest is damaged"
    try:
        check_relpath(path)
    except ValueError as e:
        return None, f"lists an unsafe {short(str(e))}; refusing the bundle"
    return ManifestEntry(path, size, sha), None


def run_dir_key(relpath: str) -> tuple[str, str] | None:
    """'experiments/E/runs/R/x/y' -> ('experiments/E/runs/R', 'x/y'); else None."""
    parts = relpath.split("/")
    if len(parts) >= 5 and parts[0] == EXPERIMENTS_DIR and parts[2] == RUNS_DIR:
        return "/".join(parts[:4]), "/".join(parts[4:])
    return None


def recorded_hashes(run_doc: dict) -> dict[str, tuple[int, str]]:
    """{path inside the run dir: (size, sha256)} as recorded in a run.json document."""
    out: dict[str, tuple[int, str]] = {}
    metrics = run_doc.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("file"), str):
        out[metrics["file"]] = (metrics.get("size"), metrics.get("sha256"))
    for a in run_doc.get("artifacts") or ():
        if isinstance(a, dict) and isinstance(a.get("path"), str):
            out[f"{ARTIFACTS_DIR}/{a['path']}"] = (a.get("size"), a.get("sha256"))
    return out


def iter_entries(root: Path, exclude: frozenset[str] = frozenset()) -> Iterator[ManifestEntry]:
    """Entries for every file under root except manifest.jsonl (and exclude), in path order."""
    current_run: str | None = None
    known: dict[str, tuple[int, str]] = {}
    for rel, entry in walk_files(root):
        if rel == MANIFEST_FILE or rel in exclude or rel in UNLISTED:
            continue
        size = entry.stat(follow_symlinks=False).st_size
        sha = None
        split = run_dir_key(rel)
        if split is not None:
            run_key, inner = split
            if run_key != current_run:
                current_run, known = run_key, {}
                try:
                    with open(root / run_key / RUN_FILE, encoding="utf-8") as f:
                        known = recorded_hashes(json.load(f))
                except (OSError, ValueError):
                    known = {}
            rec = known.get(inner)
            if rec is not None and rec[0] == size and isinstance(rec[1], str):
                sha = rec[1]
        if sha is None:
            sha, size = sha256_file(Path(entry.path))
        yield ManifestEntry(rel, size, sha)


def write_manifest(root: Path) -> int:
    """Build and atomically write root/manifest.jsonl; returns the number of entries."""
    n = 0
    with atomic_open(root / MANIFEST_FILE, "w", encoding="utf-8", newline="\n") as f:
        for e in iter_entries(root, frozenset([Path(f.name).name])):  # not the manifest's own temp file
            f.write(e.to_line() + "\n")
            n += 1
    fsync_dir(root)
    return n
