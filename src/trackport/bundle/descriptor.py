"""The root descriptor, trackport-bundle.json: build it, read it, check its version."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from trackport.errors import BadInputError, UnsupportedVersionError
from trackport.bundle import schemas
from trackport.bundle.documents import loads
from trackport.bundle.layout import FORMAT_MAJOR, FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, ROOT_FILE, parse_version

# The counts every root descriptor holds; a bundle holding units of generic kinds also
# counts them, by the kind's plural ("notes": 3).
COUNT_KEYS = ("experiments", "runs", "metric_points", "artifact_files", "artifact_bytes")
# A root descriptor is small; one this large is not one (it is read whole).
MAX_ROOT_BYTES = 16 << 20


def producer_version() -> str:
    try:
        from importlib.metadata import version

        return version("trackport")
    except Exception:  # noqa: BLE001 - not installed (run from a source tree)
        from trackport import __version__

        return __version__


def build_root(
    source: dict, selection: dict, created_at: str | None = None, counts: dict | None = None,
    *, bundle_id: str | None = None, previous: dict | None = None,
) -> dict:
    """previous: the link an increment refers to (bundle/chain.py), absent from a full bundle."""
    doc = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "producer": {"name": "trackport", "version": producer_version()},
        "created_at": created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "selection": selection,
        "counts": counts,
        "bundle_id": bundle_id or uuid.uuid4().hex,  # format 1.4: how the links of a chain name each other
    }
    if previous is not None:
        doc["previous"] = previous
    return doc


def newest_version(doc: dict) -> str:
    """The format version of a bundle this trackport adds to: its own, or the bundle's
    when that is a newer minor version (what the bundle holds already is of that one)."""
    theirs = parse_version(doc.get("format_version"))
    ours = parse_version(FORMAT_VERSION)
    return doc["format_version"] if theirs is not None and theirs > ours else FORMAT_VERSION


def format_problem(doc: object) -> tuple[str, bool] | None:
    """(message, is_version_problem) when doc is not a bundle root this trackport reads."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        return f"is not a trackport bundle descriptor (format is not {FORMAT_NAME!r})", False
    version = doc.get("format_version")
    parsed = parse_version(version)
    if parsed is None:
        return f"has an unreadable format_version {version!r}", True
    if parsed[0] != FORMAT_MAJOR:
        newer = "newer" if parsed[0] > FORMAT_MAJOR else "older"
        hint = "upgrade trackport" if parsed[0] > FORMAT_MAJOR else "use an older trackport to read it"
        return f"bundle format {version} is {newer} than this trackport understands ({FORMAT_MAJOR}.x); {hint}", True
    return None


@dataclass
class RootCheck:
    """The root descriptor as read, and what is wrong with it (worded to follow its path)."""

    doc: dict | None = None
    problems: list[str] = field(default_factory=list)
    foreign: bool = False  # not a descriptor of this format and major version: nothing else can be read
    version: bool = False  # ... because of its version (UnsupportedVersionError)


def check_root(bundle: Path) -> RootCheck:
    """Read trackport-bundle.json (no link, strict JSON) and check it: format and major
    version first (when they are wrong, nothing else is checked), then its schema, and
    counts present once the manifest is (finish() writes them before the manifest)."""
    path = bundle / ROOT_FILE
    check = RootCheck()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_ROOT_BYTES + 1)
    except OSError as e:
        if os.path.islink(path):
            check.problems.append("is a symbolic link; a bundle never holds links")
        else:
            check.problems.append(f"cannot be read: {e.strerror or e}")
        check.foreign = True
        return check
    if len(data) > MAX_ROOT_BYTES:
        check.problems.append(f"is larger than {MAX_ROOT_BYTES >> 20} MiB, so not a bundle descriptor")
        check.foreign = True
        return check
    try:
        doc = loads(data)
    except ValueError as e:
        check.problems.append(f"cannot be read as JSON: {e}")
        return check
    problem = format_problem(doc)
    if problem:
        check.problems.append(problem[0])
        check.foreign, check.version = True, problem[1]
        return check
    check.doc = doc
    check.problems += [f"does not match the bundle schema: {err}" for err in schemas.errors(schemas.BUNDLE, doc)]
    if not check.problems and doc["counts"] is None and (bundle / MANIFEST_FILE).exists():
        check.problems.append(
            "counts are null although the manifest exists: the export that wrote it did not finish cleanly; "
            "re-run the export"
        )
    return check


def load_root(bundle: Path) -> dict:
    """Read and check the root descriptor; BadInputError / UnsupportedVersionError."""
    path = bundle / ROOT_FILE
    if not os.path.lexists(path):
        raise BadInputError(f"{bundle} is not a trackport bundle (no {ROOT_FILE})")
    check = check_root(bundle)
    if check.problems:
        raise (UnsupportedVersionError if check.version else BadInputError)(f"{path}: {check.problems[0]}")
    return check.doc  # type: ignore[return-value]
