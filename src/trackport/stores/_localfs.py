"""Artifacts of local stores: artifact URIs that are plain paths or file:// URIs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, ContextManager, Iterator
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from trackport.domain import ArtifactFile, Run
from trackport.errors import UnitError
from trackport.stores._artifact_path import checked_artifact_path


def local_artifact_dir(artifact_uri: str | None, run_id: str) -> Path | None:
    """The local directory an artifact URI names; UnitError when it is not local."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UnitError(
                f"run {run_id}: artifact URI {artifact_uri} is on another host; "
                "copy its artifacts by other means"
            )
        return Path(url2pathname(unquote(parsed.path)))
    # One-letter schemes are Windows drive letters, not URI schemes.
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        return Path(artifact_uri).absolute()
    raise UnitError(
        f"run {run_id}: artifacts at {artifact_uri} are not reachable from a local store; "
        "export the run through the tracking server instead"
    )


def walk_artifacts(root: Path | None) -> Iterator[ArtifactFile]:
    """Every file under root, sorted by '/'-separated relative path; nothing if root is absent."""
    if root is None or not root.is_dir():
        return
    files: list[ArtifactFile] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath) / name
            if not full.is_file():
                continue
            rel = full.relative_to(root).as_posix()
            files.append(ArtifactFile(path=rel, size=full.stat().st_size))
    files.sort(key=lambda f: f.path)
    yield from files


def open_local_artifact(root: Path | None, path: str, run_id: str) -> BinaryIO:
    if root is None:
        raise UnitError(f"run {run_id} has no artifact location")
    full = (root / checked_artifact_path(run_id, path)).resolve()
    # A checked path can still lead out of the run's artifacts through a link.
    if not full.is_relative_to(root.resolve()):
        raise UnitError(f"run {run_id}: artifact path {path!r} is outside the run's artifacts")
    try:
        return open(full, "rb")
    except OSError as exc:
        raise UnitError(f"run {run_id}: cannot read artifact {path!r}: {exc}") from exc


class LocalArtifacts:
    """The artifact half of a source that reads them from a local folder per run (an
    mlruns folder, a database whose artifacts are on this machine): the class gives
    `_artifact_dir(run)`, None where the run's artifacts are not local."""

    def _artifact_dir(self, run: Run) -> Path | None:
        raise NotImplementedError

    def list_artifacts(self, run: Run) -> Iterator[ArtifactFile]:
        return walk_artifacts(self._artifact_dir(run))

    def missing_artifact_folder(self, run: Run) -> str | None:
        """The run's artifact folder when it is missing and its experiment's folder too:
        MLflow makes a run's folder only when the run logs a file (an MLflow 3 run that
        logs only models keeps them in the experiment's models/), so a missing folder
        under an existing experiment folder is a run without files, not a wrong place."""
        directory = self._artifact_dir(run)
        if directory is None or directory.is_dir() or directory.parent.parent.is_dir():
            return None
        return str(directory)

    def open_artifact(self, run: Run, path: str) -> ContextManager[BinaryIO]:
        return open_local_artifact(self._artifact_dir(run), path, run.run_id)
