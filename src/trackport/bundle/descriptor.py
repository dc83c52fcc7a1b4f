"""The root descriptor, trackport-bundle.json: build it, read it, check its version."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from trackport.errors import BadInputError, UnsupportedVersionError
from trackport.bundle import schemas
from trackport.bundle.layout import FORMAT_MAJOR, FORMAT_NAME, FORMAT_VERSION, ROOT_FILE, parse_version

COUNT_KEYS = ("experiments", "runs", "metric_points", "artifact_files", "artifact_bytes")


def producer_version() -> str:
    try:
        from importlib.metadata import version

        return version("trackport")
    except Exception:  # noqa: BLE001 - not installed (run from a source tree)
        from trackport import __version__

        return __version__


def build_root(source: dict, selection: dict, created_at: str | None = None, counts: dict | None = None) -> dict:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "producer": {"name": "trackport", "version": producer_version()},
        "created_at": created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "selection": selection,
        "counts": counts,
    }


def format_problem(doc: object, where: Path) -> tuple[str, bool] | None:
    """(message, is_version_problem) when doc is not a bundle root this trackport reads."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        return f"{where} is not a trackport bundle descriptor (format is not {FORMAT_NAME!r})", False
    version = doc.get("format_version")
    parsed = parse_version(version)
    if parsed is None:
        return f"{where} has an unreadable format_version {version!r}", True
    if parsed[0] != FORMAT_MAJOR:
        newer = "newer" if parsed[0] > FORMAT_MAJOR else "older"
        hint = "upgrade trackport" if parsed[0] > FORMAT_MAJOR else "use an older trackport to read it"
        return (
            f"{where}: bundle format {version} is {newer} than this trackport understands "
            f"({FORMAT_MAJOR}.x); {hint}",
            True,
        )
    return None


def load_root(bundle: Path) -> dict:
    """Read and check the root descriptor; BadInputError / UnsupportedVersionError."""
    path = bundle / ROOT_FILE
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise BadInputError(f"{bundle} is not a trackport bundle (no {ROOT_FILE})") from None
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path} cannot be read as JSON: {e}") from None
    problem = format_problem(doc, path)
    if problem:
        raise (UnsupportedVersionError if problem[1] else BadInputError)(problem[0])
    err = schemas.first_error(schemas.BUNDLE, doc)
    if err:
        raise BadInputError(f"{path} is invalid: {err}")
    return doc
