"""The trend table speaks the task's primary metric: a regression gate's trend shows the
mean absolute error where a classification gate's shows top-1 accuracy."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from ci_compress.evaluation.statistics import PairedScoreStatistics
from ci_compress.report import Report
from ci_compress.reporting.trend import build_trend, drift_line, markdown_section, write_chart
from ci_compress.tracking import PromotedVersion


def _report(student: dict[str, float], deltas: dict[str, float], stats: Any) -> Report:
    # build_trend reads the student's metrics, the deltas and the statistics only
    return cast(
        Report,
        SimpleNamespace(student=SimpleNamespace(metrics=student), deltas=deltas, statistics=stats),
    )


def _stats(metric: str, higher: bool) -> PairedScoreStatistics:
    return PairedScoreStatistics(
        samples=100, metric=metric, higher_is_better=higher, teacher_mean=0.46,
        student_mean=0.48, change=0.02, change_ci_low=0.01, change_ci_high=0.03,
        relative_change=0.04, relative_ci_low=0.02, relative_ci_high=0.06, p_value=0.01,
        confidence=0.95, resamples=200, seed=0,
    )  # fmt: skip


HISTORY = [
    PromotedVersion(
        version="1",
        run_id="r1",
        metrics={"student.mae": 0.45, "student.file_bytes": 900.0, "student.latency_ms": 0.2},
    ),
    PromotedVersion(
        version="2",
        run_id="r2",
        metrics={"student.mae": 0.47, "student.file_bytes": 850.0, "student.latency_ms": 0.2},
        current=True,
    ),
]


def test_a_regression_trend_shows_the_mae(tmp_path: Path) -> None:
    report = _report(
        {"mae": 0.4878, "rmse": 0.6, "r2": 0.3, "file_bytes": 826.0, "latency_ms": 0.21},
        {"delta.compression_ratio": 2.19, "delta.mae.increase": 0.0286},
        _stats("mae", higher=False),
    )
    trend = build_trend(HISTORY, report, registered_model="reg", alias="champion")
    assert trend["metrics"] == ["mae", "file_bytes", "latency_ms"]
    assert trend["candidate"]["mae"] == 0.4878
    assert [r["mae"] for r in trend["rows"]] == [0.45, 0.47]
    assert "accuracy" not in trend["candidate"]
    md = "\n".join(markdown_section(trend))
    assert "| version | mae | shipped file (bytes) | latency, median (ms) |" in md
    assert "| v1 | 0.45 | 900 |" in md and "| **candidate** | **0.4878** |" in md
    assert "accuracy" not in md and "%" not in md.split("Drift")[0]
    assert drift_line(trend).startswith("since v1: mae +0.0378, shipped file -8.2%")
    png = write_chart(trend, tmp_path / "trend.png")
    assert png.stat().st_size > 0


def test_a_classification_trend_is_unchanged() -> None:
    history = [
        PromotedVersion(
            version="1",
            run_id="r1",
            metrics={"student.accuracy": 0.95, "student.file_bytes": 900.0},
        )
    ]
    report = _report(
        {"accuracy": 0.94, "file_bytes": 800.0, "latency_ms": 0.1},
        {"delta.accuracy_drop_points": 1.0, "delta.compression_ratio": 2.0},
        None,
    )
    trend = build_trend(history, report, registered_model="m", alias="champion")
    assert trend["metrics"] == ["accuracy", "file_bytes", "latency_ms"]
    md = "\n".join(markdown_section(trend))
    assert "| version | top-1 accuracy | shipped file (bytes) | latency, median (ms) |" in md
    assert "| v1 | 95.00% | 900 | - |" in md
    assert drift_line(trend) == "since v1: accuracy -1.00 points, shipped file -11.1%"
