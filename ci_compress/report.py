"""The report: every number the gate used, in one versioned structure.

``report.json`` is this object's :meth:`Report.to_dict`. Renderers in
:mod:`ci_compress.reporting` turn it into a terminal table, Markdown and the CI
platforms' formats; none of them decides anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci_compress.errors import InputError
from ci_compress.gate import Check, GateResult

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
    verdict: str  # pass | fail | inconclusive
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
    size: dict[str, Any] = field(default_factory=dict)  # shipped-file breakdown, per layer
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)  # torchscript / onnx
    # The paired statistics of the accuracy drop (evaluation.statistics.PairedStatistics)
    statistics: dict[str, Any] = field(default_factory=dict)
    # The version holding mlflow.alias when the gate ran, measured on the same holdout.
    champion: ModelSummary | None = None
    # How the champion baseline was found: status compared|none|off, version, notes.
    baseline: dict[str, Any] = field(default_factory=dict)
    # Registration and promotion: registered_model, version, alias, promotion reason.
    registry: dict[str, Any] = field(default_factory=dict)
    per_class: dict[str, Any] = field(default_factory=dict)  # evaluation.metrics.per_class_table
    reproducibility: dict[str, Any] = field(default_factory=dict)  # manifest.build_manifest
    explain: dict[str, Any] | None = None  # explain.ExplainResult.to_dict, when run
    # This candidate against the last promoted versions (reporting.trend.build_trend)
    trend: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.gate.passed

    @property
    def exit_code(self) -> int:
        """0 pass, 1 gate failed, 5 inconclusive (when thresholds.inconclusive: fail)."""
        return self.gate.exit_code

    def metrics(self) -> dict[str, float]:
        """Flat metric names, as logged to MLflow."""
        out = {f"teacher.{k}": float(v) for k, v in self.teacher.metrics.items()}
        out.update({f"student.{k}": float(v) for k, v in self.student.metrics.items()})
        if self.champion is not None:
            out.update({f"champion.{k}": float(v) for k, v in self.champion.metrics.items()})
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
            "size": self.size,
            "exports": self.exports,
            "statistics": self.statistics,
            "champion": model(self.champion) if self.champion is not None else None,
            "baseline": self.baseline,
            "registry": self.registry,
            "per_class": self.per_class,
            "reproducibility": self.reproducibility,
            "explain": self.explain,
            "trend": self.trend,
        }


def report_from_dict(data: dict[str, Any]) -> Report:
    """Rebuild a :class:`Report` from ``report.json`` (the inverse of :meth:`Report.to_dict`).

    Used by the CI renderers (``ci-compress report github|gitlab|jenkins``), which render
    a report written by an earlier ``ci-compress run`` and decide nothing themselves.
    Unknown top-level keys (added by later schema versions) are ignored.
    """

    def model(role: str) -> ModelSummary:
        m = data[role]
        return ModelSummary(
            role=role,
            file=str(m["file"]),
            file_bytes=int(m["file_bytes"]),
            sha256=str(m["sha256"]),
            metrics={k: float(v) for k, v in m["metrics"].items()},
        )

    gate = data["gate"]
    checks = tuple(
        Check(
            threshold=str(c["threshold"]),
            metric=str(c["metric"]),
            limit=float(c["limit"]),
            measured=float("nan") if c["measured"] is None else float(c["measured"]),
            passed=bool(c["passed"]),
            message=str(c["message"]),
            skipped=bool(c.get("skipped", False)),
            ci_low=None if c.get("ci_low") is None else float(c["ci_low"]),
            ci_high=None if c.get("ci_high") is None else float(c["ci_high"]),
            outcome=str(c.get("outcome", "")),
        )
        for c in gate["checks"]
    )
    return Report(
        verdict=str(data["verdict"]),
        gate=GateResult(
            passed=bool(gate["passed"]),
            checks=checks,
            verdict=str(gate.get("verdict", data["verdict"])),
            decision=str(gate.get("decision", "point")),
            inconclusive_policy=str(gate.get("inconclusive_policy", "fail")),
        ),
        teacher=model("teacher"),
        student=model("student"),
        deltas={k: float(v) for k, v in data["deltas"].items()},
        thresholds={k: float(v) for k, v in data["thresholds"].items()},
        passes=list(data.get("passes", [])),
        holdout=dict(data.get("holdout", {})),
        environment=dict(data.get("environment", {})),
        config=dict(data.get("config", {})),
        mlflow=dict(data.get("mlflow", {})),
        artifacts={k: str(v) for k, v in data.get("artifacts", {}).items()},
        warnings=[str(w) for w in data.get("warnings", [])],
        size=dict(data.get("size", {})),
        exports=dict(data.get("exports", {})),
        statistics=dict(data.get("statistics", {})),
        champion=model("champion") if data.get("champion") else None,
        baseline=dict(data.get("baseline", {})),
        registry=dict(data.get("registry", {})),
        per_class=dict(data.get("per_class") or {}),
        reproducibility=dict(data.get("reproducibility") or {}),
        explain=data.get("explain"),
        trend=data.get("trend"),
    )


def read_report_json(path: Path, *, hint: str) -> Any:
    """Parse a report.json (or manifest.json) a user named: a missing or malformed file is
    one ``InputError`` line (exit 3) with ``hint``, never a traceback."""

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"report not found: {path}", hint=hint) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path} as JSON: {e}", hint=hint) from None
