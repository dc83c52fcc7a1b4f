"""trackport's three kinds of error, and the exit code each maps to.

*Fatal* errors stop the whole transfer at once (bad input, unusable store, unknown bundle
version). A *unit* failure costs one experiment or run: the engine records it and carries
on. *Transient* errors are retried by the store that met them and never reach the engine
unless retries ran out, in which case they become unit failures.
"""
from __future__ import annotations

import errno
import sqlite3
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    UNITS_FAILED = 1  # the transfer finished, but some units failed (see the summary)
    USAGE = 2  # unknown option or bad argument (click's own code)
    BAD_INPUT = 3  # missing or unusable source, target or bundle
    VERIFY_FAILED = 4  # verification found a difference or a damaged file
    AUTH = 5  # authentication or permission refused
    UNREACHABLE = 6  # a server did not answer
    BUSY = 7  # another trackport is writing into the same target
    STORAGE = 8  # the disk refused a write: full, read-only, or permission denied
    INTERNAL = 70  # a bug in trackport: please report it
    INTERRUPTED = 130


class TrackportError(Exception):
    """Base of trackport's own errors; the message is one line that says what to do."""

    exit_code = ExitCode.BAD_INPUT


class FatalError(TrackportError):
    """Stops the transfer: nothing more can be done until the user fixes something."""


class BadInputError(FatalError):
    exit_code = ExitCode.BAD_INPUT


class UnsupportedVersionError(BadInputError):
    pass


class AuthError(FatalError):
    exit_code = ExitCode.AUTH


class UnreachableError(FatalError):
    exit_code = ExitCode.UNREACHABLE


class TargetBusyError(FatalError):
    """Another transfer holds the target's lock."""

    exit_code = ExitCode.BUSY


class StorageError(FatalError):
    """The file system refused a write (no space, read-only, no permission, I/O error):
    every later write would fail the same way, so the transfer stops."""

    exit_code = ExitCode.STORAGE


class VerifyError(TrackportError):
    exit_code = ExitCode.VERIFY_FAILED


class UnitError(TrackportError):
    """This one experiment or run cannot be moved; the others go on."""

    exit_code = ExitCode.UNITS_FAILED


class InternalError(TrackportError):
    """An exception that is none of the three kinds: a bug in trackport or in one of its
    adapters. It stops the transfer (every other unit would likely fail the same way) and
    names the unit it happened in; the original exception is its __cause__."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str, kind: str | None = None, source_id: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.source_id = source_id


class TransientError(TrackportError):
    """Worth retrying (throttling, 5xx, timeouts, resets)."""

    exit_code = ExitCode.UNITS_FAILED


def reason(exc: BaseException) -> str:
    """One line about why a unit failed: trackport's own message, or the exception's type
    and text when something else broke."""
    if isinstance(exc, TrackportError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# What a file system answers when it will refuse every later write too.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free some, then run the same command again to resume",
    errno.EDQUOT: "disk quota exceeded; free some space, then run the same command again to resume",
    errno.EROFS: "the file system is read-only; choose a writable place",
    errno.EACCES: "permission denied; fix the permissions or choose another place",
    errno.EPERM: "operation not permitted; fix the permissions or choose another place",
    errno.EIO: "input/output error: the disk may be failing; check it before running again",
}
# sqlite's primary result codes for the same situations (sqlite3.Error.sqlite_errorname, 3.11+).
_SQLITE_STORAGE = {
    "SQLITE_FULL": errno.ENOSPC,
    "SQLITE_READONLY": errno.EROFS,
    "SQLITE_PERM": errno.EACCES,
    "SQLITE_CANTOPEN": errno.EACCES,
    "SQLITE_IOERR": errno.EIO,
}
_SQLITE_MESSAGES = {  # for Python 3.10, which has no sqlite_errorname
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
    "unable to open database file": errno.EACCES,
    "disk i/o error": errno.EIO,
}


def storage_error(exc: BaseException, what: str) -> StorageError | None:
    """A StorageError saying why `what` could not be written, when exc is the file system
    (or sqlite on its behalf) refusing writes; None for any other error."""
    code = None
    if isinstance(exc, OSError):
        code = exc.errno
    elif isinstance(exc, sqlite3.Error):
        name = (getattr(exc, "sqlite_errorname", None) or "").split("_")[:2]
        code = _SQLITE_STORAGE.get("_".join(name)) or _SQLITE_MESSAGES.get(str(exc).strip().lower())
    if code not in _STORAGE_ERRNOS:
        return None
    return StorageError(f"cannot write {what}: {_STORAGE_ERRNOS[code]}")
