"""Append-only JSON Lines files that survive a crash mid-line and several writer threads."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterator

from trackport._files import drop_torn_tail
from trackport.errors import storage_error


def read_jsonl(path: Path) -> Iterator[dict]:
    """The complete lines of a JSONL file; a torn last line (crash while appending) is skipped."""
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return
            yield json.loads(line)


class JsonlAppender:
    """Appends lines to path; a file system that refuses the write is a StorageError
    (the target's state directory lives where the target is)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                with path.open("rb+") as f:
                    drop_torn_tail(f)  # a kill while appending
            self._file = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise (storage_error(exc, str(path)) or exc) from None
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as exc:
                raise (storage_error(exc, str(self.path)) or exc) from None

    def sync(self) -> None:
        """Make what was appended durable (it survives a power cut, not only a kill)."""
        with self._lock:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise (storage_error(exc, str(self.path)) or exc) from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # what could not be flushed was reported by the append that failed
