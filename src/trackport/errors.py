"""trackport's three kinds of error, and the exit code each maps to.

*Fatal* errors stop the whole transfer at once (bad input, unusable store, unknown bundle
version). A *unit* failure costs one experiment or run: the engine records it and carries
on. *Transient* errors are retried by the store that met them and never reach the engine
unless retries ran out, in which case they become unit failures.
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    UNITS_FAILED = 1  # the transfer finished, but some units failed (see the summary)
    USAGE = 2  # unknown option or bad argument (click's own code)
    BAD_INPUT = 3  # missing or unusable source, target or bundle
    VERIFY_FAILED = 4  # verification found a difference or a damaged file
    AUTH = 5  # authentication or permission refused
    UNREACHABLE = 6  # a server did not answer
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


class VerifyError(TrackportError):
    exit_code = ExitCode.VERIFY_FAILED


class UnitError(TrackportError):
    """This one experiment or run cannot be moved; the others go on."""

    exit_code = ExitCode.UNITS_FAILED


class TransientError(TrackportError):
    """Worth retrying (throttling, 5xx, timeouts, resets)."""

    exit_code = ExitCode.UNITS_FAILED
