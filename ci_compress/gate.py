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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        "delta.accuracy_recovery": s_acc / t_acc if t_acc > 0 else 1.0,
    }
    if m.get("teacher.latency_ms"):
        out["delta.latency_ratio"] = m["student.latency_ms"] / m["teacher.latency_ms"]
    if m.get("teacher.parameters"):
        out["delta.parameter_ratio"] = m["student.parameters"] / m["teacher.parameters"]
    return out


# threshold -> (metric, direction, unit) ; direction "max": measured <= limit passes
RULES: dict[str, tuple[str, str, str]] = {
    "max_accuracy_drop": ("delta.accuracy_drop_points", "max", " points"),
    "max_relative_accuracy_drop": ("delta.relative_accuracy_drop", "max", ""),
    "min_compression_ratio": ("delta.compression_ratio", "min", "x"),
    "max_size_bytes": ("student.file_bytes", "max", " bytes"),
    "max_latency_ratio": ("delta.latency_ratio", "max", "x"),
    "min_recovery": ("delta.accuracy_recovery", "min", ""),
    "max_class_drop": ("delta.max_class_drop_points", "max", " points"),
}

# Thresholds about task quality (the ones a per-layer exclude list can fix).
ACCURACY_THRESHOLDS = frozenset(
    {"max_accuracy_drop", "max_relative_accuracy_drop", "min_recovery", "max_class_drop"}
)


def class_drops(teacher: Mapping[str, float], student: Mapping[str, float]) -> dict[str, float]:
    """Per-class accuracy drop in points (teacher - student), for classes both were scored on."""
    return {k: (teacher[k] - student[k]) * 100.0 for k in teacher if k in student}


def worst_class(drops: Mapping[str, float]) -> tuple[str, float] | None:
    """The class with the largest drop (ties: the first label in sort order), or None."""
    if not drops:
        return None
    label = min(drops, key=lambda k: (-drops[k], _label_key(k)))
    return label, drops[label]


def _label_key(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def _fmt(v: float, unit: str) -> str:
    if unit == " bytes":
        return f"{int(v):,}{unit}"
    return f"{v:.4g}{unit}"


def decide(
    thresholds: Mapping[str, float],
    measurements: Mapping[str, float],
    *,
    notes: Mapping[str, str] | None = None,
) -> GateResult:
    """Check every set threshold; the gate passes when all checks pass.

    ``notes`` adds words to a measured figure's message, e.g.
    ``{"delta.max_class_drop_points": "class 3"}`` names the class behind a worst-class drop.
    """
    notes = notes or {}
    figures = {**measurements}
    if "delta.accuracy_drop_points" not in figures:
        figures.update(derive(measurements))
    checks = []
    for name in sorted(thresholds):
        if name not in RULES:
            raise KeyError(f"unknown threshold {name!r}")
        metric, direction, unit = RULES[name]
        limit = float(thresholds[name])
        if metric not in figures:
            raise KeyError(f"threshold {name} needs measurement {metric!r}")
        measured = float(figures[metric])
        ok = measured <= limit if direction == "max" else measured >= limit
        word = "at most" if direction == "max" else "at least"
        verdict = "ok" if ok else "FAILED"
        note = f" ({notes[metric]})" if notes.get(metric) else ""
        message = f"{name}: {metric} = {_fmt(measured, unit)}{note}, must be {word} {_fmt(limit, unit)} ({verdict})"
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
