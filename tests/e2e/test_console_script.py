"""The console script as a real process: what the in-process runner cannot show.

Every other CLI test runs in process (``tests/helpers/cli.py``: click's runner on the
``cli`` group, which holds the error boundary). These keep a real ``ci-compress``
process for what only one shows: that its exit code and stderr equal the in-process
runner's, Ctrl-C, a terminal, a crash in a process of its own, and which modules a cold
``--help`` imports. (CI's cancel signal, SIGTERM, is tested against a real registry in
``test_mlflow_faults.py``.)
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.cli import console_command, console_env, default_sigint, run_cli, run_console
from tests.helpers.configs import base_config, write_config


def test_help_does_not_import_torch_mlflow_pydantic_or_numpy() -> None:
    code = "import sys; from ci_compress.cli import main; main(['--help']); print(sorted(m for m in ('torch','mlflow','pydantic','numpy') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env=console_env(),
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert "Exit codes:" in out


def _bad_config(d: Path) -> list[str]:
    write_config(d, base_config(thresholds={"max_acuracy_drop": 1}))
    return ["validate"]


def _missing_model(d: Path) -> list[str]:
    write_config(
        d,
        base_config(
            model={"path": "gone.safetensors", "factory": "ci_compress.demo.models:digits_mlp"}
        ),
    )
    return ["run", "--quiet"]


CASES: dict[str, tuple[Callable[[Path], list[str]], int]] = {
    "help": (lambda d: ["--help"], 0),
    "version": (lambda d: ["--version"], 0),
    "unknown command": (lambda d: ["deploy"], 2),
    "bad option value": (lambda d: ["run", "--holdout-limit", "0"], 2),
    "config not found": (lambda d: ["validate", "--config", "nope.yaml"], 2),
    "typo in the config": (_bad_config, 2),
    "model file not found": (_missing_model, 3),
    "report not found": (lambda d: ["report", "jenkins", "--report", "nope.json"], 3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_console_script_and_the_in_process_runner_agree(case: str, tmp_path: Path) -> None:
    make_args, code = CASES[case]
    args = make_args(tmp_path)
    real = run_console(*args, cwd=tmp_path)
    inside = run_cli(*args, cwd=tmp_path)
    assert real.returncode == code, real.stderr
    assert (inside.returncode, inside.stdout, inside.stderr) == (
        real.returncode,
        real.stdout,
        real.stderr,
    )
    assert "Traceback" not in real.stderr + real.stdout


BOOM = """\
import ci_compress.cli as c

def boom():
    raise RuntimeError("boom at https://user:pw-s3cret@example.org/x")

c.cli.commands["schema"].callback = boom
"""


def test_a_crash_exits_70_with_one_error_line_and_a_redacted_crash_log(tmp_path: Path) -> None:
    """An unexpected exception is a bug: exit 70, no traceback on stderr, a crash log."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BOOM)
    real = run_console("schema", cwd=tmp_path, env={"PYTHONPATH": f"{block}{os.pathsep}{REPO}"})
    assert real.returncode == 70, real.stderr
    assert "Traceback" not in real.stderr and real.stdout == ""
    first, hint = real.stderr.splitlines()
    m = re.fullmatch(
        r"Error: internal error in ci-compress \(RuntimeError: boom at https://\*\*\*@example.org/x\); details in (\S+)",
        first,
    )
    assert m, first
    assert hint == "  hint: this is a bug; please report it with the crash log"
    log = Path(m.group(1)).read_text()
    assert "Traceback" in log and "argv ['schema']" in log and "pw-s3cret" not in log


def _started(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """stderr lines up to the first containing ``marker``."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} never appeared: {''.join(seen)}")


@pytest.mark.slow
def test_ctrl_c_stops_a_gate_with_exit_130_and_no_traceback(workdir: Path) -> None:
    cfg = write_config(workdir, base_config())
    proc = subprocess.Popen(
        [*console_command(), "run", "--config", str(cfg)],
        cwd=workdir,
        env=console_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        _started(proc, "evaluating")
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert rest.splitlines()[-1] == "Aborted." and "Traceback" not in rest


def test_a_terminal_gets_a_bar(workdir: Path) -> None:
    cfg = write_config(workdir, base_config())
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(REPO), TERM="xterm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ci_compress", "run", "--config", str(cfg)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    os.close(master)
    text = b"".join(chunks).decode()
    assert "\r" in text
    assert "evaluating [" in text and "] 540/540 (100%)" in text
