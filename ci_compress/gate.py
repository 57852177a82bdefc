"""The gate: thresholds + measurements -> decision with one reason per threshold.

Pure: no I/O, no torch, no MLflow. A failed gate is a result, not an exception.

Measurements are flat names: ``teacher.accuracy``, ``student.accuracy`` (fractions),
``teacher.file_bytes``, ``student.file_bytes``, ``teacher.latency_ms``,
``student.latency_ms``. :func:`derive` computes the ``delta.*`` figures the thresholds
compare, so the report and the decision use the very same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    threshold: str  # config name, e.g. max_accuracy_drop
    metric: str  # measured figure, e.g. delta.accuracy_drop_points
    limit: float
    measured: float
    passed: bool
    message: str
    skipped: bool = False  # a baseline check with no baseline to compare (counts as passed)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.skipped:
            out["measured"] = None  # nothing was measured; NaN is not JSON
        return out


@dataclass(frozen=True)
class GateResult:
    passed: bool
    checks: tuple[Check, ...]

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks]}


def derive(m: Mapping[str, float]) -> dict[str, float]:
    """delta.* figures from teacher.* and student.* measurements."""
    t_acc, s_acc = m["teacher.accuracy"], m["student.accuracy"]
    out = {
        "delta.accuracy_drop_points": (t_acc - s_acc) * 100.0,
        "delta.relative_accuracy_drop": (t_acc - s_acc) / t_acc if t_acc > 0 else 0.0,
        "delta.compression_ratio": m["teacher.file_bytes"] / m["student.file_bytes"],
    }
    if m.get("teacher.latency_ms"):
        out["delta.latency_ratio"] = m["student.latency_ms"] / m["teacher.latency_ms"]
    if m.get("teacher.parameters"):
        out["delta.parameter_ratio"] = m["student.parameters"] / m["teacher.parameters"]
    if "champion.accuracy" in m:
        out["delta.accuracy_drop_vs_champion_points"] = (m["champion.accuracy"] - s_acc) * 100.0
    if m.get("champion.file_bytes"):
        out["delta.size_ratio_vs_champion"] = m["student.file_bytes"] / m["champion.file_bytes"]
    return out


# threshold -> (metric, direction, unit) ; direction "max": measured <= limit passes
RULES: dict[str, tuple[str, str, str]] = {
    "max_accuracy_drop": ("delta.accuracy_drop_points", "max", " points"),
    "max_relative_accuracy_drop": ("delta.relative_accuracy_drop", "max", ""),
    "min_compression_ratio": ("delta.compression_ratio", "min", "x"),
    "max_size_bytes": ("student.file_bytes", "max", " bytes"),
    "max_latency_ratio": ("delta.latency_ratio", "max", "x"),
    "max_accuracy_drop_vs_champion": ("delta.accuracy_drop_vs_champion_points", "max", " points"),
    "max_size_ratio_vs_champion": ("delta.size_ratio_vs_champion", "max", "x"),
}
# Thresholds against the current champion: skipped (not failed) when there is none yet.
BASELINE_THRESHOLDS = frozenset(k for k in RULES if k.endswith("_vs_champion"))


def _fmt(v: float, unit: str) -> str:
    if unit == " bytes":
        return f"{int(v):,}{unit}"
    return f"{v:.4g}{unit}"


def decide(thresholds: Mapping[str, float], measurements: Mapping[str, float]) -> GateResult:
    """Check every set threshold; the gate passes when all checks pass."""
    figures = {**measurements}
    if "delta.accuracy_drop_points" not in figures:
        figures.update(derive(measurements))
    checks = []
    for name in sorted(thresholds):
        if name not in RULES:
            raise KeyError(f"unknown threshold {name!r}")
        metric, direction, unit = RULES[name]
        limit = float(thresholds[name])
        if metric not in figures and name in BASELINE_THRESHOLDS:
            checks.append(
                Check(
                    threshold=name,
                    metric=metric,
                    limit=limit,
                    measured=float("nan"),
                    passed=True,
                    message=f"{name}: skipped, no champion to compare against yet",
                    skipped=True,
                )
            )
            continue
        if metric not in figures:
            raise KeyError(f"threshold {name} needs measurement {metric!r}")
        measured = float(figures[metric])
        ok = measured <= limit if direction == "max" else measured >= limit
        word = "at most" if direction == "max" else "at least"
        verdict = "ok" if ok else "FAILED"
        message = f"{name}: {metric} = {_fmt(measured, unit)}, must be {word} {_fmt(limit, unit)} ({verdict})"
        checks.append(
            Check(
                threshold=name,
                metric=metric,
                limit=limit,
                measured=measured,
                passed=ok,
                message=message,
            )
        )
    return GateResult(passed=all(c.passed for c in checks), checks=tuple(checks))
