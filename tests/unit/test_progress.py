"""Progress output: a redrawn bar on a terminal, plain throttled lines in CI logs."""

from __future__ import annotations

import io
from pathlib import Path

from ci_compress.progress import Progress, step_of
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_are_throttled_and_never_use_carriage_returns() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=False, interval=10.0, clock=clock)
    for i in range(1, 301):  # 300 batches over 30 s
        clock.t = i * 0.1
        p.step("evaluating", i * 100, 30_000)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 4, lines
    assert lines[-1].endswith("evaluating 30,000/30,000 (100%)")


def test_a_short_loop_prints_only_its_end_line() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=False, clock=clock)
    for i in range(1, 4):
        p.step("evaluating", i * 180, 540)
    assert out.getvalue().splitlines() == ["[   0.0s] evaluating 540/540 (100%)"]


def test_terminal_bar_redraws_in_place_at_most_ten_times_a_second() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=True, width=10, clock=clock)
    for i in range(1, 101):
        clock.t = i * 0.01  # 100 steps in 1 s
        p.step("training", i, 100)
    text = out.getvalue()
    draws = text.count("\r")
    assert 5 <= draws <= 12, draws
    assert text.endswith("training [##########] 100/100 (100%)\x1b[K\n")
    p("next phase")  # a message after a closed bar starts on its own line
    assert out.getvalue().endswith("\n[   1.0s] next phase\n")


def test_quiet_hides_steps_and_messages_but_not_warnings() -> None:
    out = io.StringIO()
    p = Progress(out, quiet=True, tty=False)
    p.step("evaluating", 10, 10)
    p("loading")
    p("warning: MLflow is down")
    assert out.getvalue().endswith("warning: MLflow is down\n")
    assert out.getvalue().count("\n") == 1


def test_unknown_total_is_a_plain_count() -> None:
    out = io.StringIO()
    p = Progress(out, tty=True)
    p.step("evaluating", 1234, None)
    assert "evaluating 1,234" in out.getvalue() and "%" not in out.getvalue()


def test_step_of_finds_the_step_method_only_on_progress_objects() -> None:
    assert step_of(print) is None
    assert step_of(Progress(io.StringIO())) is not None


def test_ci_log_of_a_real_run_has_one_evaluation_line_and_no_carriage_returns(
    workdir: Path,
) -> None:
    cfg = write_config(workdir, base_config())
    proc = run_cli("run", "--config", str(cfg), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "evaluating 540/540 (100%)" in line]
