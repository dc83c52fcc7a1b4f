"""The one rule for artifact paths, in every store: trackport._files.check_relpath.

A path that comes from a source or a caller (a bundle, a server's listing) must stay inside
the run's artifacts wherever it is read or written, so each store refuses the same paths
(absolute, drive letters, backslashes, NUL, empty, '.' or '..' segments) the same way.
"""
from __future__ import annotations

from trackport._files import check_relpath
from trackport.errors import UnitError


def checked_artifact_path(run_id: str, path: str) -> str:
    """path, if it is a '/'-separated relative path; else the run's UnitError, one line."""
    try:
        return check_relpath(path)
    except ValueError as exc:
        raise UnitError(f"run {run_id}: artifact path refused: {exc}") from None
