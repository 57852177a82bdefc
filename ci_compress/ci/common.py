"""What every CI renderer shares: reading report.json, the outcome, the sticky-note body.

The gate has already decided (``report.json`` says pass or fail). The renderers only map
that result, and the user's ``fail-on`` choice, to the platform's states:

============  ==================  ==================  ==================
state         ``fail-on: fail``   ``fail-on: warn``   ``fail-on: never``
============  ==================  ==================  ==================
pass          0                   0                   0
warn          0                   6 (WARN)            0
inconclusive  5                   5                   0
fail          1                   1                   0
============  ==================  ==================  ==================

"warn" is a passed gate that carries warnings (e.g. MLflow unreachable with
``mlflow.required: false``), a report whose verdict is ``warn``, or an ``inconclusive``
verdict that the config lets through (``thresholds.inconclusive: warn|pass``).
"inconclusive" is an inconclusive verdict that blocks (``thresholds.inconclusive:
fail``): a result like the others, rendered like them, with its own exit code, 5 (the
holdout could not decide; not the same as a student shown to be worse). Exit code 6 maps
to each platform's own "not green, not red": Jenkins ``unstable``, GitLab
``allow_failure: exit_codes: [6]``; GitHub has no such state, so 6 fails the step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ci_compress.errors import ExitCode, InputError
from ci_compress.evaluation.statistics import PairedScoreStatistics
from ci_compress.report import Report, read_report_json, report_from_dict

Echo = Callable[[str], None]
FailOn = Literal["fail", "warn", "never"]
State = Literal["pass", "warn", "inconclusive", "fail"]
FAIL_ON_CHOICES: tuple[str, ...] = ("fail", "warn", "never")

MARKER_PREFIX = "<!-- ci-compress:report"


def marker(key: str = "default") -> str:
    """The hidden HTML comment that identifies our PR comment / MR note."""
    return f"{MARKER_PREFIX} key={key} -->"


# Sections of an untrusted report.json that are left out: free-form structures the
# renderers format without a type check, and links (a fork's MLflow run URL).
UNTRUSTED_DROPPED = ("mlflow", "statistics", "per_class", "explain", "size", "exports", "trend")


_INERT = str.maketrans({"`": "'", "|": "¦", "[": "(", "]": ")", "<": "‹", ">": "›", "&": "+"})


def untrusted_text(s: str) -> str:
    """A string from someone else's report.json, made inert in Markdown and HTML, in prose
    and in code spans alike: no tags, no links or images, no mentions, no auto-linked
    URLs, no code-span or table breakout. Characters are replaced, not escaped."""
    s = s.translate(_INERT)
    s = s.replace("@", "@\u200b").replace("://", ":/\u200b/").replace("www.", "www\u200b.")
    return " ".join(s.splitlines())[:500]


def untrusted_report_data(data: Any) -> Any:
    """report.json data from an untrusted source (a fork's artifact) to render from:
    every string escaped (:func:`untrusted_text`), the free-form sections dropped. Numbers
    stay numbers; :func:`report_from_dict` still checks their types."""

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return untrusted_text(v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    if not isinstance(data, dict):
        return data
    return {k: walk(v) for k, v in data.items() if k not in UNTRUSTED_DROPPED}


def load_report(path: Path, *, untrusted: bool = False) -> Report:
    """Read a report.json written by ``ci-compress run`` (``untrusted``: written by someone
    else, e.g. a fork's PR job: see :func:`untrusted_report_data`)."""
    data = read_report_json(
        path,
        hint="run `ci-compress run` first; it writes report.json into report.dir (or --report-dir)",
    )
    if untrusted:
        data = untrusted_report_data(data)
    try:
        return report_from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(
            f"{path} is not a ci-compress report.json (missing or bad field: {e})",
            hint="pass the report.json ci-compress run wrote",
        ) from None


def state(report: Report) -> State:
    """pass | warn | inconclusive | fail, as the gate decided (warn: passed with
    warnings; inconclusive: the holdout could not decide and the config blocks on that)."""
    if not report.passed and report.verdict == "inconclusive":
        return "inconclusive"
    if not report.passed or report.verdict == "fail":
        return "fail"
    if report.verdict in ("warn", "inconclusive") or report.warnings:
        return "warn"
    return "pass"


def exit_code(st: State, fail_on: str, verdict: str = "") -> int:
    """The process exit code for a state under the user's ``fail-on`` choice (table above).

    A blocking ``inconclusive`` verdict exits 5 rather than 1: the holdout could not
    decide, which is not the same as a student shown to be worse.
    """
    if fail_on not in FAIL_ON_CHOICES:
        raise ValueError(f"fail_on must be one of {FAIL_ON_CHOICES}, got {fail_on!r}")
    if fail_on == "never" or st == "pass":
        return int(ExitCode.PASSED)
    if st == "inconclusive":
        return int(ExitCode.INCONCLUSIVE)
    if st == "fail":
        if verdict == "inconclusive":
            return int(ExitCode.INCONCLUSIVE)
        return int(ExitCode.GATE_FAILED)
    return int(ExitCode.WARN) if fail_on == "warn" else int(ExitCode.PASSED)


def echo_findings(report: Report, echo: Echo) -> None:
    """One log line per failed threshold and per warning (plain CI logs)."""
    for c in report.gate.failures:
        echo(f"ci-compress: FAILED {c.message}")
    for w in report.warnings:
        echo(f"ci-compress: warning: {w}")


def conclude(report: Report, fail_on: str, echo: Echo) -> int:
    """The exit code for ``report`` under ``fail_on``, announced in one closing line."""
    st = state(report)
    code = exit_code(st, fail_on, report.verdict)
    word = {
        "pass": "passed",
        "warn": "passed with warnings",
        "fail": "failed",
        "inconclusive": "was inconclusive (the holdout cannot tell the drop from the threshold)",
    }[st]
    echo(f"ci-compress: the gate {word} (fail-on: {fail_on}, exit {code})")
    return code


def primary_metric(report: Report) -> dict[str, str] | None:
    """The task's primary metric of a gate on a task other than classification, as
    strings: ``metric`` (its name), ``metric_teacher``, ``metric_student`` and
    ``metric_change`` (signed so that positive is worse: teacher - student when higher is
    better, student - teacher when lower is), plus ``metric_worse`` ("drop" or
    "increase"). None for classification, whose outputs keep ``accuracy_drop``."""
    st = report.statistics
    if "delta.accuracy_drop_points" in report.deltas or not isinstance(st, PairedScoreStatistics):
        return None
    return {
        "metric": st.metric,
        "metric_teacher": f"{st.teacher_mean:.6g}",
        "metric_student": f"{st.student_mean:.6g}",
        "metric_change": f"{st.change:.6g}",
        "metric_worse": st.worse,
    }


def outputs(report: Report, report_path: Path) -> dict[str, str]:
    """The few figures later steps/jobs want, as strings (GitHub outputs, GitLab dotenv).

    A classification gate gives ``accuracy_drop`` (points); a gate on another task gives
    ``accuracy_drop`` empty and its primary metric instead (:func:`primary_metric`).
    """
    d = report.deltas
    metric = primary_metric(report)
    out = {
        "verdict": report.verdict,
        "state": state(report),
        "passed": "true" if report.passed else "false",
        "accuracy_drop": f"{d.get('delta.accuracy_drop_points', float('nan')):.4f}"
        if metric is None
        else "",
        "compression_ratio": f"{d.get('delta.compression_ratio', float('nan')):.4f}",
        "student_bytes": str(report.student.file_bytes),
        "report_path": str(report_path),
        "mlflow_run_id": (report.mlflow.run_id if report.mlflow else None) or "",
        "model_version": report.registry.version if report.registry else "",
    }
    if metric is not None:
        out.update(metric)
    return out


def note_body(markdown: str, key: str, limit: int, *, footer: str = "") -> str:
    """Marker + Markdown (+ footer), cut to ``limit`` characters with a visible note."""
    head = marker(key) + "\n"
    tail = ("\n" + footer) if footer else ""
    body = head + markdown + tail
    if len(body) <= limit:
        return body
    cut = "\n\n… (truncated: the full report is in the job summary and report.md)\n"
    room = limit - len(head) - len(tail) - len(cut)
    return head + markdown[: max(room, 0)] + cut + tail


def describe_http_error(resp: Any) -> str:
    """A short text for a failed API response: status and the API's own message."""
    try:
        msg = resp.json().get("message", "")
    except ValueError:
        msg = resp.text[:200]
    return f"HTTP {resp.status_code}" + (f": {msg}" if msg else "")
