"""The error boundary inside the ``cli`` group, in process: each kind of failure gets its
own exit code and stderr, ``main`` returns the code, and the SIGTERM handler ``run``
installs is put back. (The same against a real process: tests/e2e/test_console_script.py.)"""

from __future__ import annotations

import signal
from pathlib import Path

import click
import pytest

from ci_compress.cli import cli, main
from ci_compress.errors import InputError
from tests.helpers.cli import CliResult, run_cli
from tests.helpers.configs import base_config, write_config


def _one_line_error(proc: CliResult) -> str:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _schema_raises(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def boom() -> None:
        raise exc

    command = cli.commands["schema"]
    assert isinstance(command, click.Command)
    monkeypatch.setattr(command, "callback", boom)


def test_our_error_prints_its_message_and_hint_and_exits_with_its_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _schema_raises(monkeypatch, InputError("holdout unreadable", hint="check data.holdout"))
    proc = run_cli("schema", cwd=tmp_path)
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr == "Error: holdout unreadable\n  hint: check data.holdout\n"


def test_an_unexpected_exception_is_a_bug_exit_70_with_a_crash_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _schema_raises(monkeypatch, ZeroDivisionError("division by zero"))
    proc = run_cli("schema", cwd=tmp_path)
    assert proc.returncode == 70
    line = _one_line_error(proc)
    assert line.startswith(
        "Error: internal error in ci-compress (ZeroDivisionError: division by zero)"
    )
    assert proc.crash_log is not None and "ZeroDivisionError" in proc.crash_log
    assert "argv ['schema']" in proc.crash_log


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _schema_raises(monkeypatch, KeyboardInterrupt())
    proc = run_cli("schema", cwd=tmp_path)
    assert proc.returncode == 130 and proc.stderr.splitlines()[-1] == "Aborted."


def test_usage_errors_exit_2_with_click_s_message(tmp_path: Path) -> None:
    proc = run_cli("run", "--holdout-limit", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Invalid value for '--holdout-limit'" in proc.stderr and "Traceback" not in proc.stderr
    assert run_cli("deploy", cwd=tmp_path).returncode == 2


def test_main_returns_the_exit_code_and_cli_main_can_return_it_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema"]) == 0
    assert main(["report", "jenkins", "--report", "missing/report.json"]) == 3
    assert cli.main(["--version"], standalone_mode=False) == 0
    with pytest.raises(SystemExit) as e:
        cli.main(["nope"])
    assert e.value.code == 2
    assert "Error: " in capsys.readouterr().err


def test_the_sigterm_handler_run_installs_is_put_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`run` turns CI's SIGTERM into KeyboardInterrupt; an in-process caller keeps its own."""
    from ci_compress import pipeline

    during: list[object] = []

    def fake_run(*args: object, **kwargs: object) -> None:
        during.append(signal.getsignal(signal.SIGTERM))
        raise InputError("stop here")

    monkeypatch.setattr(pipeline, "run", fake_run)
    cfg = write_config(tmp_path, base_config())
    before = signal.getsignal(signal.SIGTERM)
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=tmp_path)
    assert proc.returncode == 3 and _one_line_error(proc) == "Error: stop here"
    assert during and during[0] is not before
    assert signal.getsignal(signal.SIGTERM) is before
