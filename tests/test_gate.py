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
