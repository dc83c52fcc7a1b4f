"""Where the files of a bundle being read are: a local directory or an S3 prefix.

The reader, the validator and verify name a file by its path in the bundle (as
manifest.jsonl lists it) and ask this interface for it, so none of them knows where the
bytes come from. Locally every file is opened without following a link and must lie
under the bundle's real root (a bundle never holds links, and one that does is hostile).
On S3 there are no links: a file's size comes from one listing of the prefix, and its
bytes stream from GetObject, or (what needs a seekable file: Parquet, an artifact a sink
may rewind) are downloaded into a temp file, so disk use is bounded by the files in flight
and a small cache (S3Files), not by the bundle.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import threading
import uuid
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Iterator

from trackport._files import sha256_file, sha256_stream
from trackport.bundle.layout import MANIFEST_FILE, UNLISTED, walk_files


class BundleFiles(ABC):
    @abstractmethod
    def where(self, rel: str) -> str:
        """The file's full name, for messages."""

    @abstractmethod
    def problem(self, rel: str, size: int) -> str | None:
        """Why rel is not a regular file of that size reached without a link; None when it is."""

    @abstractmethod
    def open(self, rel: str) -> BinaryIO:
        """The file, seekable, opened without following a link. OSError when it cannot be."""

    def sha256(self, rel: str) -> str:
        with self.open(rel) as f:
            return sha256_stream(f)[0]

    def head(self, rel: str, limit: int) -> bytes:
        """At most limit bytes of the file (a document, read whole)."""
        with self.open(rel) as f:
            return f.read(limit)

    @abstractmethod
    def unlisted(self, listed: set[str]) -> Iterator[tuple[str, str]]:
        """(path, "file" or "symbolic link") of what is present but not listed."""


class LocalFiles(BundleFiles):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)

    def path(self, rel: str) -> Path:
        return self.root.joinpath(*rel.split("/"))

    def where(self, rel: str) -> str:
        return str(self.path(rel))

    def problem(self, rel: str, size: int) -> str | None:
        path = self.path(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return f"is listed in {MANIFEST_FILE} but missing"
        except OSError as e:
            return f"cannot be read: {e.strerror or e}"
        if stat.S_ISLNK(st.st_mode):
            return "is a symbolic link, not a regular file; a bundle never holds links"
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file"
        if os.path.realpath(path) != os.path.join(self.real_root, *rel.split("/")):
            return "lies behind a symbolic link; a bundle never holds links"
        if st.st_size != size:
            return f"is {st.st_size} bytes but {MANIFEST_FILE} says {size}: the file was truncated or changed"
        return None

    def open(self, rel: str) -> BinaryIO:
        fd = os.open(self.path(rel), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise OSError(0, "not a regular file")
        return f

    def sha256(self, rel: str) -> str:
        return sha256_file(self.path(rel))[0]

    def unlisted(self, listed: set[str]) -> Iterator[tuple[str, str]]:
        for rel, entry in walk_files(self.root):
            if rel != MANIFEST_FILE and rel not in listed and rel not in UNLISTED:
                yield rel, "symbolic link" if entry.is_symlink() else "file"


class S3Files(BundleFiles):
    """The files of a bundle at an S3 prefix (remote: bundle.s3_bundle.S3Bundle).

    An import reads a run's files twice when its sink cannot take a run back (checked
    whole first, then written): the first open keeps the downloaded copy for the second,
    which unlinks it (its handle keeps the bytes until closed), so each object is fetched
    once. Copies nobody opens again are dropped oldest first beyond `budget` bytes."""

    def __init__(self, remote, budget: int = 2 << 30) -> None:
        self.remote = remote
        self._sizes: dict[str, int] | None = None
        self._spool = Path(tempfile.mkdtemp(prefix="trackport-s3-"))
        weakref.finalize(self, shutil.rmtree, self._spool, True)
        self._kept: OrderedDict[str, tuple[Path, int]] = OrderedDict()
        self._kept_bytes = 0
        self._budget = budget
        self._lock = threading.Lock()

    def _listed(self) -> dict[str, int]:
        with self._lock:  # one listing, whichever thread asks first
            if self._sizes is None:
                self._sizes = {rel: size for rel, size, _ in self.remote.objects()}
            return self._sizes

    def where(self, rel: str) -> str:
        return f"{self.remote.uri}/{rel}"

    def problem(self, rel: str, size: int) -> str | None:
        found = self._listed().get(rel)
        if found is None:
            return f"is listed in {MANIFEST_FILE} but missing"
        if found != size:
            return f"is {found} bytes but {MANIFEST_FILE} says {size}: the object was truncated or changed"
        return None

    def open(self, rel: str) -> BinaryIO:
        with self._lock:
            kept = self._kept.pop(rel, None)
            if kept is not None:
                self._kept_bytes -= kept[1]
        if kept is not None:  # the second read: the copy goes once this handle is closed
            f = open(kept[0], "rb")
            kept[0].unlink()
            return f
        path = self._spool / uuid.uuid4().hex
        with open(path, "wb") as out:
            self.remote.read_into(rel, out)
        f = open(path, "rb")
        size = path.stat().st_size
        with self._lock:
            self._kept[rel] = (path, size)
            self._kept_bytes += size
            while self._kept_bytes > self._budget and self._kept:
                _, (old, old_size) = self._kept.popitem(last=False)
                self._kept_bytes -= old_size
                old.unlink(missing_ok=True)
        return f

    def sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        for chunk in self.remote.stream(rel):
            h.update(chunk)
        return h.hexdigest()

    def head(self, rel: str, limit: int) -> bytes:
        data = bytearray()
        for chunk in self.remote.stream(rel):
            data += chunk
            if len(data) >= limit:
                break
        return bytes(data[:limit])

    def unlisted(self, listed: set[str]) -> Iterator[tuple[str, str]]:
        for rel in sorted(self._listed()):
            if rel != MANIFEST_FILE and rel not in listed and rel not in UNLISTED:
                yield rel, "object"
