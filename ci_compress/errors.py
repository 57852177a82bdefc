"""One exception root; each user error carries its exit code and a hint.

"The model got worse" is not an exception: it is a :class:`~ci_compress.gate.GateResult`
with ``passed=False`` and exit code :data:`EXIT_GATE_FAILED`. Exceptions mean the tool
could not decide. ``cli.main`` is the single boundary that turns them into a one-line
``Error: ...`` message and an exit code.
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes (README, "Exit codes")."""

    PASSED = 0
    GATE_FAILED = 1
    CONFIG = 2  # bad config, bad flag or usage (click uses 2 for usage errors too)
    INPUT = 3  # unreadable/unsafe model artifact, bad holdout data, NaN outputs
    INFRA = 4  # MLflow or network unreachable/refusing
    INCONCLUSIVE = 5  # the gate could not decide with the data given
    WARN = 6  # passed with warnings, and the user asked to fail on warnings (--fail-on warn)
    # The gate passed and was eligible to promote, but another gate moved the alias after
    # this one compared itself with the champion: registered, not promoted (re-run it).
    CHAMPION_MOVED = 7
    INTERNAL = 70  # a bug in ci-compress: a crash log is written


EXIT_GATE_FAILED = ExitCode.GATE_FAILED


class CICompressWarning(UserWarning):
    """Warnings raised by ci-compress itself (errors in our own test suite)."""


class CICompressError(Exception):
    """Root of every error ci-compress reports to a user."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(CICompressError):
    """The config file or a command-line option is wrong; names the field path."""

    exit_code = ExitCode.CONFIG

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


class InputError(CICompressError):
    """A model artifact or holdout data cannot be used as given."""

    exit_code = ExitCode.INPUT


class ArtifactError(InputError):
    """The model artifact is missing, unreadable, unsafe, corrupt or does not fit."""


class DataError(InputError):
    """The holdout or training data is missing, empty, mis-shaped or non-finite."""


class ModelOutputError(InputError):
    """The model produced outputs that cannot be evaluated (NaN/inf, wrong shape)."""


class InfraError(CICompressError):
    """A service the gate depends on (MLflow, a download host) failed."""

    exit_code = ExitCode.INFRA


class TrackingError(InfraError):
    """MLflow could not be reached or refused a request."""


class OutputError(InputError):
    """A file or folder the gate writes cannot be written: the path is a file where a
    folder is needed (or the reverse), a read-only file system, no permission."""


class DiskFullError(InfraError):
    """The disk (or the user's quota) is full: the machine, not the input, is at fault."""


# errno values that mean "the disk is full", not "this path is wrong".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def os_error(e: OSError, path: object | None = None, *, doing: str = "write") -> CICompressError:
    """The user error for an OSError met while writing ``path``: a full disk is
    infrastructure (exit 4), anything else about the path is an input (exit 3).

    Raise it ``from e``. The path named is ``path``, else the one the OSError carries.
    """
    where = path if path is not None else (e.filename or "a file")
    why = e.strerror or type(e).__name__
    if e.errno in DISK_FULL_ERRNOS:
        return DiskFullError(
            f"no space left to {doing} {where} ({why})",
            hint="free disk space (or raise the quota) on the runner, or point report.dir at a larger disk",
        )
    return OutputError(
        f"cannot {doing} {where}: {why}",
        hint="check that the folder exists or can be created, that no file or folder of that name is in the way, and that it is writable (report.dir, --report-dir)",
    )
