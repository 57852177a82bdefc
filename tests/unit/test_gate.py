"""The gate is pure: every threshold checked without torch or MLflow."""

from __future__ import annotations

import pytest

from ci_compress.gate import decide, derive

M = {
    "teacher.accuracy": 0.97,
    "student.accuracy": 0.955,
    "teacher.file_bytes": 200_000.0,
    "student.file_bytes": 40_000.0,
    "teacher.latency_ms": 2.0,
    "student.latency_ms": 1.0,
}


def test_derive_computes_points_ratio_and_latency() -> None:
    d = derive(M)
    assert d["delta.accuracy_drop_points"] == pytest.approx(1.5)
    assert d["delta.relative_accuracy_drop"] == pytest.approx(0.015 / 0.97)
    assert d["delta.compression_ratio"] == pytest.approx(5.0)
    assert d["delta.latency_ratio"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("threshold", "limit", "passed"),
    [
        ("max_accuracy_drop", 2.0, True),
        ("max_accuracy_drop", 1.0, False),
        ("max_relative_accuracy_drop", 0.02, True),
        ("max_relative_accuracy_drop", 0.01, False),
        ("min_compression_ratio", 5.0, True),
        ("min_compression_ratio", 5.1, False),
        ("max_size_bytes", 40_000, True),
        ("max_size_bytes", 39_999, False),
        ("max_latency_ratio", 0.5, True),
        ("max_latency_ratio", 0.4, False),
    ],
)
def test_each_threshold_passes_and_fails_at_its_limit(
    threshold: str, limit: float, passed: bool
) -> None:
    result = decide({threshold: limit}, M)
    assert result.passed is passed
    (check,) = result.checks
    assert check.threshold == threshold and check.limit == limit
    assert ("ok" if passed else "FAILED") in check.message


def test_one_failing_threshold_fails_the_gate_and_names_itself() -> None:
    result = decide({"max_accuracy_drop": 1.0, "min_compression_ratio": 3.0}, M)
    assert not result.passed
    assert [c.threshold for c in result.failures] == ["max_accuracy_drop"]
    assert (
        "1.5 points" in result.failures[0].message
        and "at most 1 points" in result.failures[0].message
    )


@pytest.mark.parametrize(("limit", "passed"), [(0.98, True), (0.99, False)])
def test_min_recovery_is_student_over_teacher(limit: float, passed: bool) -> None:
    d = derive(M)
    assert d["delta.accuracy_recovery"] == pytest.approx(0.955 / 0.97)  # 0.9845
    (check,) = decide({"min_recovery": limit}, M).checks
    assert check.passed is passed and check.metric == "delta.accuracy_recovery"


def test_max_class_drop_names_the_worst_class() -> None:
    from ci_compress.evaluation.classes import class_drops, worst_class

    drops = class_drops({"0": 1.0, "1": 0.9, "2": 0.95}, {"0": 1.0, "1": 0.7, "2": 0.95})
    assert worst_class(drops) == ("1", pytest.approx(20.0))
    assert worst_class({"3": 5.0, "10": 5.0, "2": 1.0}) == ("3", 5.0)  # ties: lowest label
    assert worst_class({}) is None
    m = {**M, "delta.max_class_drop_points": 20.0}
    result = decide(
        {"max_accuracy_drop": 2.0, "max_class_drop": 10.0},
        m,
        notes={"delta.max_class_drop_points": "class 1"},
    )
    assert not result.passed
    assert [c.threshold for c in result.failures] == ["max_class_drop"]
    assert "20 points (class 1), must be at most 10 points" in result.failures[0].message


def test_class_note_lists_every_class_over_the_limit() -> None:
    from ci_compress.evaluation.classes import class_figures
    from ci_compress.evaluation.metrics import TaskMetrics

    np = pytest.importorskip("numpy")
    total = np.array([10, 10, 10, 10])
    teacher = TaskMetrics(40, 40, 1.0, class_correct=np.array([10, 10, 10, 10]), class_total=total)
    student = TaskMetrics(31, 31, 0.775, class_correct=np.array([10, 5, 9, 7]), class_total=total)
    figures, notes = class_figures(teacher, student, limit=15.0)
    assert figures == {"delta.max_class_drop_points": pytest.approx(50.0)}
    assert notes["delta.max_class_drop_points"] == "class 1; also over the limit: class 3"
    _, notes = class_figures(teacher, student)
    assert notes["delta.max_class_drop_points"] == "class 1"
