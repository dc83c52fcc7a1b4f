"""Where things live in a bundle, what they are called, and how to write them safely.

Everything path-shaped about bundle format v1 is here: file names, the format name and
version, checks for ids and artifact paths that become file names, and the atomic
"temp name, then os.replace" JSON writer the other modules share.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Iterator

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

CHUNK_SIZE = 1 << 20  # artifacts and hashes are streamed in 1 MiB chunks
TMP_MARK = ".tmp-"  # temp names are ".<final name>.tmp-<random hex>"

_DRIVE = re.compile(r"^[A-Za-z]:")
_VERSION = re.compile(r"^(\d+)\.(\d+)$")


def parse_version(text: object) -> tuple[int, int] | None:
    """'1.0' -> (1, 0); anything that is not "<major>.<minor>" -> None."""
    if not isinstance(text, str):
        return None
    m = _VERSION.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def temp_name(final_name: str) -> str:
    return f".{final_name}{TMP_MARK}{uuid.uuid4().hex[:12]}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


def check_component(value: str, what: str) -> str:
    """An id that becomes one directory name. Returns it, or raises ValueError."""
    if (
        not isinstance(value, str)
        or not value
        or value in (".", "..")
        or value.startswith(".")
        or any(c in value for c in "/\\\0")
    ):
        raise ValueError(f"{what} {value!r} cannot be used as a directory name")
    return value


def check_relpath(path: str) -> str:
    """A '/'-separated relative path (an artifact path). Returns it, or raises ValueError.

    Refused: empty, absolute, drive letters, backslashes, NUL, empty/'.'/'..' segments.
    """
    if not isinstance(path, str) or not path:
        raise ValueError("empty path")
    if "\0" in path:
        raise ValueError(f"path {path!r} contains NUL")
    if "\\" in path:
        raise ValueError(f"path {path!r} contains a backslash")
    if path.startswith("/") or _DRIVE.match(path):
        raise ValueError(f"path {path!r} is absolute")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"path {path!r} has an empty, '.' or '..' segment")
    return path


def safe_join(base: Path, relpath: str) -> Path:
    """base/relpath after check_relpath (lexical check only; see resolve_inside)."""
    return base.joinpath(*check_relpath(relpath).split("/"))


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


def fsync_dir(path: Path) -> None:
    """Make the names in directory path durable (after a rename into it). Errors are
    raised: on Linux a failed fsync is not retryable, so the write may be lost. Only a
    file system that cannot fsync a directory at all (EINVAL) is let pass."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name in the same directory, fsync, then os.replace."""
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, doc: Any) -> None:
    write_bytes_atomic(path, dumps(doc).encode("utf-8"))


def write_json(path: Path, doc: Any) -> None:
    """Plain write (for files inside a run's temp directory, made visible by its rename)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(doc))


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex sha256, size) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def copy_stream(src: BinaryIO, dst_path: Path) -> tuple[str, int]:
    """Stream src into a new file dst_path (must not exist) while hashing; (sha256, size)."""
    h = hashlib.sha256()
    size = 0
    with open(dst_path, "xb") as out:
        while chunk := src.read(CHUNK_SIZE):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest(), size


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
