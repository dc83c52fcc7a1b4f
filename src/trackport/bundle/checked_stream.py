"""A binary stream of one artifact file of a bundle that checks its bytes as they are read.

A sink writes what it reads, so a damaged artifact must never be read whole: the read that
would return its last byte raises instead (see docs/bundle-format.md, "Reading untrusted
bundles"). verify hashes every file itself; this is the import's check.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from trackport._files import CHUNK_SIZE
from trackport.errors import UnitError


class CheckedArtifact:
    """A binary stream of one artifact file that hashes what it reads.

    Bytes are hashed the first time they are read (a rewind for a retry re-reads without
    re-hashing; a seek forward hashes the skipped range first). The read that would return
    the file's last byte, or that finds the file shorter or longer than recorded, raises
    UnitError instead when the content does not match: a consumer that writes what it
    reads never holds the whole damaged file."""

    def __init__(self, f: BinaryIO, path: Path, size: int, sha256: str) -> None:
        self._f = f
        self._path = path
        self._size = size
        self._sha = sha256
        self._hash = hashlib.sha256()
        self._hashed = 0
        self._verified = False
        self._failure: str | None = None

    # -- the checks
    def _fail(self, why: str) -> None:
        self._failure = f"{self._path} {why}: the artifact is damaged, so its run is not imported"
        raise UnitError(self._failure)

    def _absorb(self, data: bytes) -> None:
        if self._hashed + len(data) > self._size:
            self._fail(f"holds more than the {self._size} bytes recorded for it")
        self._hash.update(data)
        self._hashed += len(data)
        if self._hashed == self._size and not self._verified:
            if self._hash.hexdigest() != self._sha:
                self._fail("does not match its sha256 recorded in run.json and manifest.jsonl")
            self._verified = True

    def _catch_up(self, position: int) -> None:
        fd = self._f.fileno()
        while self._hashed < position:
            chunk = os.pread(fd, min(CHUNK_SIZE, position - self._hashed), self._hashed)
            if not chunk:
                self._fail(f"is shorter than the {self._size} bytes recorded for it")
            self._absorb(chunk)

    # -- file protocol
    def read(self, n: int | None = -1) -> bytes:
        if self._failure:
            raise UnitError(self._failure)
        position = self._f.tell()
        if position > self._hashed:
            self._catch_up(position)
        data = self._f.read(-1 if n is None else n)
        end = position + len(data)
        if end > self._hashed:
            self._absorb(data[self._hashed - position :])
        at_end = n is None or n < 0 or len(data) < n  # a buffered file reads short only at its end
        if at_end and self._f.tell() >= self._hashed and self._hashed < self._size:
            self._fail(f"is shorter than the {self._size} bytes recorded for it")
        if self._hashed == self._size and not self._verified:
            self._absorb(b"")  # an empty file: verified at its first read
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> CheckedArtifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
