"""A unit's or run's files copied into a bundle folder, hashed as they are written."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from trackport._files import copy_stream, safe_join
from trackport.domain import ArtifactFile
from trackport.errors import UnitError
from trackport.stores.base import RunContent, RunWriteResult, UnitContent, UnitWriteResult


def copy_files(content: RunContent | UnitContent, root: Path, what: str, result: RunWriteResult | UnitWriteResult,
               held: Callable[[ArtifactFile], dict | None] = lambda af: None) -> list[dict]:
    """Every file of content into root, hashed as it is written, counted into result;
    their records ({path, size, sha256}) sorted by path. what: "run <id>: artifact".
    held: the record of a file held already (an increment's reference), not copied."""
    files: list[dict] = []
    for af in content.artifact_files():
        record = held(af)
        if record is not None:
            files.append(record)
            continue
        try:
            target = safe_join(root, af.path)
        except ValueError as e:
            raise UnitError(f"{what} {e}; nothing of it was written") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with content.open_artifact(af.path) as src:
                sha, size = copy_stream(src, target)
        except FileExistsError:
            raise UnitError(f"{what} {af.path!r} is listed twice") from None
        files.append({"path": af.path, "size": size, "sha256": sha})
        result.artifact_files += 1
        result.artifact_bytes += size
    return sorted(files, key=lambda f: f["path"])
