"""The report: every number the gate used, in one versioned structure.

``report.json`` is this object's :meth:`Report.to_dict`. Renderers in
:mod:`ci_compress.reporting` turn it into a terminal table, Markdown and the CI
platforms' formats; none of them decides anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ci_compress.gate import GateResult

SCHEMA_VERSION = 1


@dataclass
class ModelSummary:
    role: str  # teacher | student
    file: str
    file_bytes: int
    sha256: str
    metrics: dict[str, float]


@dataclass
class Report:
    verdict: str  # pass | fail
    gate: GateResult
    teacher: ModelSummary
    student: ModelSummary
    deltas: dict[str, float]
    thresholds: dict[str, float]
    passes: list[dict[str, Any]]
    holdout: dict[str, Any]
    environment: dict[str, Any]
    config: dict[str, Any]
    mlflow: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    per_class: dict[str, Any] = field(default_factory=dict)  # evaluation.metrics.per_class_table
    reproducibility: dict[str, Any] = field(default_factory=dict)  # manifest.build_manifest
    explain: dict[str, Any] | None = None  # explain.ExplainResult.to_dict, when run

    @property
    def passed(self) -> bool:
        return self.gate.passed

    def metrics(self) -> dict[str, float]:
        """Flat metric names, as logged to MLflow."""
        out = {f"teacher.{k}": float(v) for k, v in self.teacher.metrics.items()}
        out.update({f"student.{k}": float(v) for k, v in self.student.metrics.items()})
        out.update({k: float(v) for k, v in self.deltas.items()})
        out["gate.passed"] = 1.0 if self.gate.passed else 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        def model(m: ModelSummary) -> dict[str, Any]:
            return {
                "file": m.file,
                "file_bytes": m.file_bytes,
                "sha256": m.sha256,
                "metrics": m.metrics,
            }

        return {
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict,
            "passed": self.gate.passed,
            "gate": self.gate.to_dict(),
            "thresholds": self.thresholds,
            "teacher": model(self.teacher),
            "student": model(self.student),
            "deltas": self.deltas,
            "metrics": self.metrics(),
            "passes": self.passes,
            "holdout": self.holdout,
            "environment": self.environment,
            "config": self.config,
            "mlflow": self.mlflow,
            "artifacts": self.artifacts,
            "warnings": self.warnings,
            "per_class": self.per_class,
            "reproducibility": self.reproducibility,
            "explain": self.explain,
        }
