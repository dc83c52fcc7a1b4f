"""Where things live in a bundle, what they are called, and how to write them safely.

Everything path-shaped about bundle format v1 is here: file names, the format name and
version, checks for ids and artifact paths that become file names, and the atomic
"temp name, then os.replace" JSON writer the other modules share.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from trackport._files import (  # noqa: F401 - re-exported for the bundle modules
    CHUNK_SIZE,
    TMP_MARK,
    copy_stream,
    fsync_dir,
    is_temp_name,
    sha256_file,
    temp_name,
    write_bytes_atomic,
)
from trackport._files import check_component, check_relpath, safe_join  # noqa: F401 - re-exported

FORMAT_NAME = "trackport-bundle"
FORMAT_VERSION = "1.1"
FORMAT_MAJOR = 1

ROOT_FILE = "trackport-bundle.json"
MANIFEST_FILE = "manifest.jsonl"
EXPERIMENTS_DIR = "experiments"
TRANSFER_DIR = "transfer"
EXPERIMENT_FILE = "experiment.json"
RUNS_DIR = "runs"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.parquet"
ARTIFACTS_DIR = "artifacts"
# The writer's lock (trackport.locking): changes with every writer, so never listed.
UNLISTED = frozenset({f"{TRANSFER_DIR}/lock"})


_VERSION = re.compile(r"^(\d+)\.(\d+)$")


def parse_version(text: object) -> tuple[int, int] | None:
    """'1.0' -> (1, 0); anything that is not "<major>.<minor>" -> None."""
    if not isinstance(text, str):
        return None
    m = _VERSION.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def resolve_inside(base: Path, relpath: str) -> Path:
    """base/relpath, checked lexically and after resolving symlinks to stay inside base."""
    target = safe_join(base, relpath)
    real_base = os.path.realpath(base)
    real_target = os.path.realpath(target)
    if not real_target.startswith(real_base.rstrip(os.sep) + os.sep):
        raise ValueError(f"path {relpath!r} resolves outside {base}")
    return Path(real_target)


def experiment_dir(root: Path, experiment_id: str) -> Path:
    return root / EXPERIMENTS_DIR / check_component(experiment_id, "experiment id")


def runs_dir(root: Path, experiment_id: str) -> Path:
    return experiment_dir(root, experiment_id) / RUNS_DIR


def run_dir(root: Path, experiment_id: str, run_id: str) -> Path:
    return runs_dir(root, experiment_id) / check_component(run_id, "run id")


def dumps(doc: Any) -> str:
    """The one JSON encoding of bundle documents: sorted keys, UTF-8, 2-space indent."""
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: Path, doc: Any) -> None:
    write_bytes_atomic(path, dumps(doc).encode("utf-8"))


def write_json(path: Path, doc: Any) -> None:
    """Plain write (for files inside a run's temp directory, made visible by its rename)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(doc))


def walk_files(root: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """Every non-directory entry under root as ('/'-joined relative path, entry), in
    sorted order of the relative path strings (code point order), streaming.

    Sorting a directory by name, with '/' appended to sub-directory names, yields the
    global path order, so no full listing is ever held in memory.
    """

    def walk(directory: str, prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
        with os.scandir(directory) as it:
            entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it]
        entries.sort(key=lambda pair: pair[0])
        for key, entry in entries:
            if key.endswith("/"):
                yield from walk(entry.path, prefix + key)
            else:
                yield prefix + key, entry

    yield from walk(str(root), "")
