"""File-safety helpers every writer shares: durable renames, atomic writes, streamed hashes.

They live below every package (bundle, stores, transfer) because a crash-safe write is the
same wherever it happens; the bundle format only decides names.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import sys
import uuid
from pathlib import Path
from contextlib import contextmanager
from typing import IO, Any, BinaryIO, Iterator

CHUNK_SIZE = 1 << 20  # artifacts and hashes are streamed in 1 MiB chunks
TMP_MARK = ".tmp-"  # temp names are ".<final name>.tmp-<random hex>"
_DRIVE = re.compile(r"^[A-Za-z]:")


def temp_name(final_name: str) -> str:
    return f".{final_name}{TMP_MARK}{uuid.uuid4().hex[:12]}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


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


def sync_file_system(path: Path) -> None:
    """Make every write so far to the file system holding path durable, in one call: the
    files written with durable=False (below) since. Linux's syncfs; os.sync elsewhere."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc is not None and _libc.syncfs(fd) == 0:
            return
        if _libc is not None:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
        os.sync()
    finally:
        os.close(fd)


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs  # noqa: B018 (present since glibc 2.14)
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


@contextmanager
def atomic_open(path: Path, mode: str = "wb", *, durable: bool = True, **options: Any) -> Iterator[IO]:
    """A file that appears at path only whole: written under a temp name in the same
    directory (the file's .name), fsynced, then moved into place; removed on error.
    durable=False leaves out the fsync: a killed process still leaves the file whole or
    absent, but a power cut may tear it until sync_file_system (its writer's business)."""
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, mode, **options) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_open(path, durable=durable) as f:
        f.write(data)


def drop_torn_tail(f: BinaryIO) -> None:
    """Cut a last line an append left without its newline (a kill while appending), so the
    next line starts clean; f is open for reading and writing, and is left at its end. The
    file is read from its end a block at a time: a ledger or id map of a million traces is
    not read whole to append to it."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    while end > 0:
        start = max(0, end - (64 << 10))
        f.seek(start)
        newline = f.read(end - start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    f.truncate(end)
    f.seek(0, os.SEEK_END)


def sha256_stream(f: BinaryIO) -> tuple[str, int]:
    """(hex sha256, size) of what is left to read in f, read in chunks."""
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(CHUNK_SIZE):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex sha256, size) of a file, read in chunks."""
    with open(path, "rb") as f:
        return sha256_stream(f)


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
