"""The one rule for artifact paths, in every store (trackport._files.check_relpath), and
the walk over a tree a server lists one directory at a time.

A path that comes from a source or a caller (a bundle, a server's listing) must stay inside
the run's artifacts wherever it is read or written, so each store refuses the same paths
(absolute, drive letters, backslashes, NUL, empty, '.' or '..' segments) the same way.
"""
from __future__ import annotations

from typing import Callable, Iterable

from trackport._files import check_relpath
from trackport.domain import ArtifactFile
from trackport.errors import UnitError


def checked_artifact_path(run_id: str, path: str) -> str:
    """path, if it is a '/'-separated relative path; else the run's UnitError, one line."""
    try:
        return check_relpath(path)
    except ValueError as exc:
        raise UnitError(f"run {run_id}: artifact path refused: {exc}") from None


def walk_listing(list_dir: Callable[[str], Iterable[dict]]) -> list[ArtifactFile]:
    """Every file under a root a server lists one directory at a time (list_dir(directory):
    entries with a path relative to the root, is_dir and file_size), sorted by path."""
    files: list[ArtifactFile] = []
    pending = [""]
    visited: set[str] = set()
    while pending:
        directory = pending.pop()
        if directory in visited:  # a misbehaving server must not loop us forever
            continue
        visited.add(directory)
        for entry in list_dir(directory):
            path = entry.get("path")
            if not path or path == directory:
                continue
            if entry.get("is_dir"):
                pending.append(path)
            else:
                files.append(ArtifactFile(path=path, size=int(entry.get("file_size", 0))))
    files.sort(key=lambda f: f.path)
    return files
