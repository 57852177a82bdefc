"""Running the CLI from tests: in process through click's runner, or as a real process.

:func:`run_cli` invokes the ``cli`` group with ``click.testing.CliRunner``. The group
holds the error boundary (``BoundaryGroup.main``), so the exit code and stderr are the
console script's; a call costs the work itself plus ~20 ms, where a subprocess first
spends ~1.7 s importing torch, mlflow and the rest. :func:`run_console` runs the
installed ``ci-compress`` console script in a subprocess, for what only a real process
shows: signals, a terminal, which modules a cold start imports, and the parity test
that holds the two together (``tests/e2e/test_console_script.py``).

Both return objects with ``returncode``, ``stdout`` and ``stderr`` (the field names of
``subprocess.CompletedProcess``), so a test can move between them unchanged.

In process, the CLI shares the test process: :func:`run_cli` gives it the same clean
environment the subprocess gets (no ``GITHUB_*``, ``GITLAB*``, ``CI_*``, ``JENKINS*``,
``MLFLOW_*`` from the outer shell), runs it in ``cwd``, and afterwards puts back the
whole of ``os.environ`` (MlflowTracker sets its fast-fail variables), the working
directory, the values registered with :mod:`ci_compress.redaction` and torch's thread
count and deterministic-algorithms flag, ``sys.path``, and unloads the modules a config's
factory imported from ``cwd``. The boundary itself puts back the SIGTERM
handler ``run`` installs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import REPO

# Variables of the CI the tests themselves run in: a test sets the ones it means.
OUTER_CI_PREFIXES = ("GITHUB_", "GITLAB", "CI_", "JENKINS", "MLFLOW_")
# click wraps help to the terminal, 80 columns less 2 without one (a pipe, a CI log);
# CliRunner would force 80.
HELP_WIDTH = 78


@dataclass(frozen=True)
class CliResult:
    """One in-process CLI call: exit code and the two streams, kept apart."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    crash_log: str | None = None  # the crash log's text after an internal error (exit 70)


def run_cli(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> CliResult:
    """``ci-compress ARGS`` in this process, in ``cwd``, with ``env`` on top of a clean one."""
    import click.testing

    from ci_compress import redaction
    from ci_compress.cli import cli

    overrides: dict[str, str | None] = {k: None for k in os.environ if _outer_ci(k)}
    overrides.update(env or {})
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_torch = _torch_state()
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    runner = click.testing.CliRunner(catch_exceptions=False, capture="fd")
    redaction.clear()
    os.chdir(cwd)
    try:
        result = runner.invoke(
            cli, list(args), env=overrides, prog_name="ci-compress", terminal_width=HELP_WIDTH
        )
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        redaction.clear()
        _restore_torch(saved_torch)
        sys.path[:] = saved_path
        _forget_modules_under(Path(cwd), saved_modules)
    crash_log = None
    if result.exit_code == 70:
        m = re.search(r"details in (\S+ci-compress-crash-\S+\.log)", result.stderr)
        if m and Path(m.group(1)).is_file():
            crash_log = Path(m.group(1)).read_text()
            # Shown by pytest with the failing test's captured output.
            print(f"ci-compress {' '.join(args)} crashed:\n{crash_log}", file=sys.stderr)
    return CliResult(
        args=args,
        returncode=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        crash_log=crash_log,
    )


def _forget_modules_under(folder: Path, keep: set[str]) -> None:
    """Unload the modules a call imported from ``folder`` (a config's factory package), so
    a later call in another folder imports its own module of the same name."""
    root = str(folder.resolve())
    for name in set(sys.modules) - keep:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if file.startswith(root):
            del sys.modules[name]


def console_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: this one less the outer CI's variables, with
    this checkout first on PYTHONPATH (so the console script imports this tree)."""
    full = {k: v for k, v in os.environ.items() if not _outer_ci(k)}
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env or {})
    return full


def console_command() -> list[str]:
    """The installed ``ci-compress`` console script (``python -m ci_compress`` without one)."""
    script = Path(sys.executable).parent / "ci-compress"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ci_compress"]


def default_sigint() -> None:
    """``preexec_fn`` for a CLI subprocess a test interrupts: SIGINT as a terminal or a CI
    runner delivers it. A shell that starts a job in the background (``cmd &``) sets
    SIGINT to ignored, children inherit that, and Ctrl-C would then do nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_console(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``ci-compress ARGS`` as a real process: its exit code, stdout and stderr."""
    return subprocess.run(
        [*console_command(), *args],
        cwd=cwd,
        env=console_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _outer_ci(name: str) -> bool:
    return name.startswith(OUTER_CI_PREFIXES)


def _torch_state() -> tuple[Any, ...] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )


def _restore_torch(state: tuple[Any, ...] | None) -> None:
    torch = sys.modules.get("torch")
    if torch is None or state is None:
        return
    threads, deterministic, warn_only = state
    torch.set_num_threads(threads)
    torch._C._set_deterministic_algorithms(deterministic, warn_only=warn_only)
