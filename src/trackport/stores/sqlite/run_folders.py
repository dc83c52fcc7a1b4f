"""The artifact folders of runs (and logged models) a local sqlite sink writes, and the only
folders it removes.

Two stores can share one artifact tree: two databases side by side in one directory, or a
server's database read as a source while the target's artifacts go where the server keeps
its own. trackport keeps run ids, so the folder a target run would use,
`<experiment location>/<run id>/`, can be the folder of the same run in the other store.
So a sink never writes into, or removes, a folder it did not make:

* a run's folder is *claimed*: its path is recorded in the store's state directory
  (`claims/<run id>.json`), then the folder is made with mkdir, which fails if anything
  is already there (that run then fails, naming the folder; nothing is touched);
* its files are written under a temporary name inside it and moved into place as
  `artifacts/` before the run's rows are committed;
* after the commit the claim is dropped; after a failure the claimed folder is removed;
  a claim left by a killed transfer is settled when the store is next opened for writing
  (while holding its lock): the folder is removed if its run was never committed.

A logged model's folder, `<experiment location>/models/<model id>/`, is claimed the same
way (its claim names its kind, so that settling asks whether the model was committed).

A run the store already holds (trackport sync patching it in place) has its folder: files
are written into it one by one, each replacing the file of its path atomically
(replace_files).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Sequence, Union

from trackport._files import CHUNK_SIZE
from trackport.domain import ArtifactFile
from trackport.errors import UnitError, storage_error
from trackport.stores._artifact_path import checked_artifact_path
from trackport.stores.base import RunContent, RunWriteResult, UnitWriteResult

CLAIMS_DIR = "claims"
ARTIFACTS = "artifacts"
TEMP_PREFIX = ".artifacts.tmp-"
PATCH_TEMP_PREFIX = ".artifact-file.tmp-"  # a file being replaced (replace_files)
RUN = "run"
WriteResult = Union[RunWriteResult, UnitWriteResult]  # counts artifact_files and artifact_bytes
# For a file's path, what to do to its whole content before it is written (an MLmodel file
# naming ids and locations), or None to copy it as it is.
Rewrite = Callable[[str], Callable[[bytes], bytes] | None]


class RunFolders:
    def __init__(self, state_dir: Path, store_identity: str | None) -> None:
        self._claims = state_dir / CLAIMS_DIR
        self._claims.mkdir(parents=True, exist_ok=True)
        self.store_identity = store_identity

    def refuse_foreign(self, unit_id: str, folder: Path, what: str = RUN) -> None:
        """A run (or logged model) without artifacts still names folder as its artifact
        location: it must not be a folder of another store's."""
        if os.path.lexists(folder):
            raise UnitError(_foreign(what, unit_id, folder))

    def write(
        self, unit_id: str, folder: Path, content: RunContent, files: list, result: WriteResult,
        *, what: str = RUN, rewrite: Rewrite | None = None,
    ) -> None:
        """Claim folder and fill folder/artifacts with the unit's files (what: "run" or
        "logged model"); on failure remove what was made (the claim is then gone too)."""
        record = self._claims / f"{unit_id}.json"
        try:
            claim = {"folder": str(folder), "store": self.store_identity, "kind": what}
            record.write_text(json.dumps(claim), encoding="utf-8")
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(folder)
        except OSError as exc:
            record.unlink(missing_ok=True)  # the folder was not made: there is nothing to claim
            if isinstance(exc, FileExistsError):
                raise UnitError(_foreign(what, unit_id, folder)) from None
            raise (storage_error(exc, f"the artifacts of {what} {unit_id} into {folder}") or exc) from None
        try:
            self._fill(unit_id, folder, content, files, result, what, rewrite)
        except BaseException:
            self.undo(unit_id, folder)
            raise

    def _fill(
        self, unit_id: str, folder: Path, content: RunContent, files: list, result: WriteResult, what: str,
        rewrite: Rewrite | None,
    ) -> None:
        temp = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}"
        root = temp.resolve()
        try:
            temp.mkdir()
            for f in files:
                dest = destination(root, unit_id, f.path, what)
                dest.parent.mkdir(parents=True, exist_ok=True)
                copy_file(content, f.path, dest, result, rewrite(f.path) if rewrite is not None else None)
            os.rename(temp, folder / ARTIFACTS)
        except FileExistsError:
            raise UnitError(f"{what} {unit_id}: an artifact path is listed twice") from None
        except OSError as exc:
            raise (storage_error(exc, f"the artifacts of {what} {unit_id} into {folder}") or exc) from None

    def committed(self, unit_id: str) -> None:
        """The unit's rows are committed: its folder is its own now."""
        (self._claims / f"{unit_id}.json").unlink(missing_ok=True)

    def undo(self, unit_id: str, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.lexists(folder):
            (self._claims / f"{unit_id}.json").unlink(missing_ok=True)

    def settle(self, is_committed: Callable[[str, str], bool]) -> None:
        """Claims left by killed transfers into this store: dropped where the unit was
        committed (is_committed(kind, unit id): "run" or "logged model"), else the folder
        they made is removed. Claims recorded for another database at this path (it was
        replaced) are left, with their folders."""
        for record in sorted(self._claims.glob("*.json")):
            try:
                claim = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # torn while being written: its folder was never made
                record.unlink(missing_ok=True)
                continue
            if claim.get("store") != self.store_identity:
                continue
            unit_id = record.stem
            if is_committed(claim.get("kind", RUN), unit_id):
                record.unlink(missing_ok=True)
            else:
                self.undo(unit_id, Path(claim["folder"]))


def destination(root: Path, unit_id: str, path: str, what: str = RUN) -> Path:
    """Where the artifact file at path goes under root (a resolved folder): refused, one
    line, when the path is not a plain relative one or leads out of root through a link."""
    dest = (root / checked_artifact_path(unit_id, path)).resolve()
    if not dest.is_relative_to(root) or dest == root:  # out through a link
        raise UnitError(f"{what} {unit_id}: artifact path {path!r} escapes its artifact directory")
    return dest


def copy_file(
    content: RunContent, path: str, dest: Path, result: WriteResult, change: Callable[[bytes], bytes] | None = None
) -> None:
    """The source's file at path written to dest, which must not exist yet; counted in result."""
    with content.open_artifact(path) as src, open(dest, "xb") as dst:
        if change is not None:  # a small file (an MLmodel), rewritten whole
            data = change(src.read())
            dst.write(data)
            result.artifact_bytes += len(data)
        else:
            while chunk := src.read(CHUNK_SIZE):
                dst.write(chunk)
                result.artifact_bytes += len(chunk)
    result.artifact_files += 1


def replace_files(run_id: str, artifact_dir: Path, content: RunContent, files: Sequence[ArtifactFile],
                  result: WriteResult) -> None:
    """Write files into the artifact folder of a run this store holds (made if missing),
    each one whole or not at all: written under a temporary name in the run's own folder
    (artifact_dir's parent, outside what is listed as the run's artifacts), then moved over
    the file of that path with os.replace. Temporary files a killed patch left are removed
    first (the store's lock is held, so no other writer of ours has any open)."""
    run_folder = artifact_dir.parent
    try:
        for stale in run_folder.glob(f"{PATCH_TEMP_PREFIX}*") if run_folder.is_dir() else ():
            stale.unlink(missing_ok=True)
        artifact_dir.mkdir(parents=True, exist_ok=True)
        root = artifact_dir.resolve()
        for f in files:
            dest = destination(root, run_id, f.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            temp = run_folder / f"{PATCH_TEMP_PREFIX}{uuid.uuid4().hex[:12]}"
            try:
                copy_file(content, f.path, temp, result)
                os.replace(temp, dest)
            finally:
                temp.unlink(missing_ok=True)
    except OSError as exc:
        raise (storage_error(exc, f"the artifacts of run {run_id} into {artifact_dir}")
               or UnitError(f"run {run_id}: cannot write its artifacts into {artifact_dir}: {exc}")) from None


def _foreign(what: str, unit_id: str, folder: Path) -> str:
    return (
        f"{what} {unit_id}: its artifact folder {folder} exists and was not made by this transfer (another store"
        f" may keep this {what}'s artifacts there), so nothing is written into it; give this store its own"
        " --artifact-root"
    )
