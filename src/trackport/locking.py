"""One writer per target: an operating-system file lock in the target's state directory.

The lock is flock(2) on `<state dir>/lock`: the kernel releases it when its holder exits,
however it ends (a kill -9 included), so a lock is never left behind, and there is no
stale-lock guessing. The file itself stays; it holds a line about its current holder
(process id, host, command, start time), so the refusal can name the other process.
Credentials never appear there: only the command's name and sub-command are written.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from trackport.errors import TargetBusyError, storage_error

LOCK_FILE = "lock"
_ATTEMPTS, _PAUSE_S = 10, 0.05  # a lock held for half a second is another writer's


class TargetLock:
    """Held from a sink's opening to its close; refuses a second writer at once."""

    _fd: int | None = None

    def __init__(self, state_dir: Path, target: str) -> None:
        self.path = state_dir / LOCK_FILE
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise (storage_error(exc, f"the lock of {target} ({self.path})") or exc) from None
        if not _take(self._fd):
            holder = _holder(self._fd)
            os.close(self._fd)
            self._fd = None
            raise TargetBusyError(
                f"{target} is being written by another trackport ({holder}); wait for it to finish"
                " or stop it, then run the same command again"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, (json.dumps(_me(), sort_keys=True) + "\n").encode())

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # a sink dropped without close() must not keep its target locked
        self.release()


def _take(fd: int) -> bool:
    """The exclusive lock, waiting out a moment's shared hold (is_locked, from `status`)."""
    for attempt in range(_ATTEMPTS):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < _ATTEMPTS:
                time.sleep(_PAUSE_S)
    return False


def is_locked(state_dir: Path) -> str | None:
    """Who holds the lock of the target whose state is in state_dir, or None."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None


def _me() -> dict:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]]) if sys.argv else "python"
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a process that is just starting"
    return f"pid {info.get('pid')} on {info.get('host')}, `{info.get('command')}` since {info.get('since')}"
