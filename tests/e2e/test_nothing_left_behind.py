"""Nothing left behind: a gate that ends in an error or a signal removes what it wrote.

A later CI step (an upload, a promotion, ``ci-compress report``) must never take an
unchecked student or a half-written report for a checked result. Before this, only an
error inside the evaluation removed the shipped student: a full disk, an unwritable
report file, a failing chart or a CI cancel (SIGTERM) while the analysis ran left
``student.ccz`` (and report.json) behind. A completed gate, passed or failed, keeps its
files. The bad-input catalogue (``tests/e2e/test_bad_inputs.py``) checks the same for
every one of its cases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ci_compress.pipeline import outputs
from tests.helpers.cli import console_command, console_env, default_sigint, run_cli
from tests.helpers.configs import base_config, write_config


def left_behind(workdir: Path) -> list[str]:
    return [p.name for p in outputs(workdir / "report", "student.ccz") if p.is_file()]


@pytest.mark.slow
def test_a_full_disk_is_exit_4_naming_the_file_and_leaves_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write of the gate goes to /dev/full (ENOSPC at flush), as on a full disk."""
    import ci_compress.files

    real_close = os.close

    def full_disk(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        real_close(fd)
        return open("/dev/full", mode)

    monkeypatch.setattr(ci_compress.files.os, "fdopen", full_disk)
    path = write_config(workdir, base_config())
    proc = run_cli("run", "--config", str(path), "--quiet", cwd=workdir)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Error: no space left to write " in proc.stderr and "student.ccz" in proc.stderr
    assert left_behind(workdir) == []
    assert not [p for p in (workdir / "report").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_failure_after_the_reports_were_written_removes_them(workdir: Path) -> None:
    """report.json and report.md are written before junit.xml; junit.xml cannot be."""
    (workdir / "report" / "junit.xml").mkdir(parents=True)
    path = write_config(workdir, base_config())
    proc = run_cli("run", "--config", str(path), "--quiet", cwd=workdir)
    assert proc.returncode == 3, proc.stderr
    assert "report/junit.xml: Is a directory" in proc.stderr
    assert left_behind(workdir) == []


@pytest.mark.slow
@pytest.mark.parametrize("verdict", ["pass", "fail"])
def test_a_completed_gate_keeps_its_files(workdir: Path, verdict: str) -> None:
    config = (
        base_config(thresholds={"max_accuracy_drop": 5.0})
        if verdict == "pass"
        else base_config(
            passes=[{"type": "prune", "amount": 0.9}], thresholds={"max_accuracy_drop": 0.0}
        )
    )
    path = write_config(workdir, config)
    proc = run_cli("run", "--config", str(path), "--quiet", cwd=workdir)
    assert proc.returncode == (0 if verdict == "pass" else 1), proc.stderr
    kept = set(left_behind(workdir))
    assert {"student.ccz", "report.json", "report.md", "junit.xml"} <= kept
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["verdict"] == verdict


def _start_sleeping_gate(workdir: Path, call: int) -> tuple[subprocess.Popen[str], Path]:
    """``ci-compress run`` as a real process whose holdout factory sleeps on its
    ``call``-th call (2: evaluating the shipped student; 4: the analysis after it)."""
    counter = workdir / "factory-calls"
    config = base_config(
        data={
            "holdout": {
                "factory": "tests.helpers.bad_models:sleeps_on_call",
                "kwargs": {"counter": str(counter), "call": call},
            }
        },
        explain={"when": "always"},
    )
    path = write_config(workdir, config)
    proc = subprocess.Popen(
        [*console_command(), "run", "--config", str(path), "--quiet"],
        cwd=workdir,
        env=console_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    sleeping = Path(str(counter) + ".sleeping")
    deadline = time.monotonic() + 240
    while not sleeping.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the gate never reached factory call {call}:\n{out}\n{err}")
        time.sleep(0.1)
    return proc, sleeping


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "call"),
    [
        (signal.SIGTERM, 4),  # the analysis, after evaluation: was left behind
        (signal.SIGINT, 4),
        (signal.SIGTERM, 2),  # evaluating the shipped student
    ],
    ids=["sigterm-in-explain", "sigint-in-explain", "sigterm-in-evaluation"],
)
def test_a_signal_mid_run_removes_the_student_and_reports(
    workdir: Path, sig: signal.Signals, call: int
) -> None:
    proc, _ = _start_sleeping_gate(workdir, call)
    try:
        assert (workdir / "report" / "student.ccz").is_file()  # shipped before the signal
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    assert left_behind(workdir) == []
