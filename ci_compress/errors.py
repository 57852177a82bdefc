"""One exception root; each user error carries its exit code and a hint.

"The model got worse" is not an exception: it is a :class:`~ci_compress.gate.GateResult`
with ``passed=False`` and exit code :data:`EXIT_GATE_FAILED`. Exceptions mean the tool
could not decide. ``cli.main`` is the single boundary that turns them into a one-line
``Error: ...`` message and an exit code.
"""

from __future__ import annotations

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
