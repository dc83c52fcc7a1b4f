"""Append-only JSON Lines files that survive a crash mid-line and several writer threads."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator


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
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_torn_tail(path)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    @staticmethod
    def _repair_torn_tail(path: Path) -> None:
        if not path.exists() or path.stat().st_size == 0:
            return
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        self._file.close()
