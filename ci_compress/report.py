"""The report: every number the gate used, in one versioned structure of typed sections.

``report.json`` is :meth:`Report.to_dict`, and :meth:`Report.from_dict` reads it back
(the CI renderers render a report an earlier ``ci-compress run`` wrote). Every section
is a frozen dataclass with its own ``to_dict``/``from_dict``; the report is built once,
by :func:`ci_compress.pipeline.assemble_report`, and later stages add what only they
know (the MLflow run, the registry, the files written) with :func:`dataclasses.replace`,
never by mutation.

Renderers in :mod:`ci_compress.reporting` turn a report into a terminal table,
Markdown and the CI platforms' formats; none of them decides anything.

Three sections stay typed mappings, on purpose:

- ``config``: the redacted config dump. Its schema is the config's own (validated and
  published as JSON Schema by :mod:`ci_compress.config`); a second typed copy here
  would only drift from it.
- ``reproducibility``: the manifest :func:`ci_compress.reproducibility.build_manifest`
  writes, also on its own as ``manifest.json``. It is a document with its own version
  (``manifest_version``) that ``ci-compress reproduce`` reads from either place.
- ``explain``: the JSON form of :class:`ci_compress.explain.ExplainResult`, the typed
  result; the explain module sits above this one (it runs the pipeline's stages), and
  the explain renderers take this same dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci_compress.errors import ExitCode, InputError
from ci_compress.evaluation.classes import PerClass
from ci_compress.evaluation.statistics import (
    PairedScoreStatistics,
    PairedStatistics,
    statistics_from_dict,
)
from ci_compress.gate import Check, GateResult, Tightened

SCHEMA_VERSION = 1
# registry.promotion when another gate moved the alias after this one compared itself
# with the champion: the version is registered, the alias stays (exit 7).
CHAMPION_MOVED = "champion-moved"

Statistics = PairedStatistics | PairedScoreStatistics
"""The report's ``statistics`` section: the paired statistics of the accuracy drop
(classification), or of the change of the task's per-sample primary score (any other
task; its ``metric`` names it)."""

__all__ = [
    "SCHEMA_VERSION",
    "Artifacts",
    "Baseline",
    "ChampionRecord",
    "Environment",
    "ExportResult",
    "HoldoutInfo",
    "LayerSize",
    "MlflowInfo",
    "ModelSummary",
    "PassSummary",
    "PerClass",
    "RegistryInfo",
    "Report",
    "SizeBreakdown",
    "Statistics",
    "TeacherSource",
    "read_report_json",
    "report_from_dict",
]


class _Section:
    """Read access by JSON key (``report.registry["version"]``) for code written against
    the dict-shaped report of schema 1; the package itself reads the fields."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


# ---------------------------------------------------------------- the models


@dataclass(frozen=True)
class ModelSummary(_Section):
    role: str  # teacher | student | champion
    file: str
    file_bytes: int
    sha256: str
    metrics: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "file_bytes": self.file_bytes,
            "sha256": self.sha256,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, role: str, data: Mapping[str, Any]) -> ModelSummary:
        return cls(
            role=role,
            file=str(data["file"]),
            file_bytes=int(data["file_bytes"]),
            sha256=str(data["sha256"]),
            metrics={k: float(v) for k, v in data["metrics"].items()},
        )


@dataclass(frozen=True)
class PassSummary(_Section):
    """What one compression pass did (``passes.base.PassRecord`` as the report keeps it).

    ``options`` is the pass's config and ``details`` its own findings: both are shaped
    by the pass (one module per pass), so they stay mappings.
    """

    name: str
    index: int
    options: Mapping[str, Any]
    params_before: int
    params_after: int
    nonzero_before: int
    nonzero_after: int
    seconds: float
    modules: tuple[str, ...]
    details: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "options": self.options,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "nonzero_before": self.nonzero_before,
            "nonzero_after": self.nonzero_after,
            "seconds": self.seconds,
            "modules": list(self.modules),
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PassSummary:
        return cls(
            name=str(data["name"]),
            index=int(data["index"]),
            options=data.get("options", {}),
            params_before=int(data.get("params_before", 0)),
            params_after=int(data.get("params_after", 0)),
            nonzero_before=int(data.get("nonzero_before", 0)),
            nonzero_after=int(data.get("nonzero_after", 0)),
            seconds=float(data.get("seconds", 0.0)),
            modules=tuple(str(m) for m in data.get("modules", ())),
            details=data.get("details", {}),
        )


# ---------------------------------------------------------------- what was measured


@dataclass(frozen=True)
class HoldoutInfo(_Section):
    """The holdout as evaluated: its name, sample count, the sha256 of its samples, and
    the shape and dtypes of one input (the MLflow dataset schema)."""

    name: str
    samples: int
    sha256: str
    x_shape: tuple[int, ...] | None = None
    x_dtype: str | None = None
    y_dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "samples": self.samples,
            "sha256": self.sha256,
            "x_shape": None if self.x_shape is None else list(self.x_shape),
            "x_dtype": self.x_dtype,
            "y_dtype": self.y_dtype,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HoldoutInfo:
        shape = data.get("x_shape")
        return cls(
            name=str(data["name"]),
            samples=int(data["samples"]),
            sha256=str(data["sha256"]),
            x_shape=None if shape is None else tuple(int(n) for n in shape),
            x_dtype=_opt_str(data.get("x_dtype")),
            y_dtype=_opt_str(data.get("y_dtype")),
        )


@dataclass(frozen=True)
class Environment(_Section):
    """Versions and settings the numbers depend on, and the CI context of the run."""

    ci_compress: str
    torch: str
    numpy: str
    python: str
    platform: str
    threads: int
    seed: int
    ci: Mapping[str, str]  # ci.env.CIContext, known fields only

    def to_dict(self) -> dict[str, Any]:
        return {
            "ci_compress": self.ci_compress,
            "torch": self.torch,
            "numpy": self.numpy,
            "python": self.python,
            "platform": self.platform,
            "threads": self.threads,
            "seed": self.seed,
            "ci": dict(self.ci),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Environment:
        return cls(
            ci_compress=str(data.get("ci_compress", "")),
            torch=str(data.get("torch", "")),
            numpy=str(data.get("numpy", "")),
            python=str(data.get("python", "")),
            platform=str(data.get("platform", "")),
            threads=int(data.get("threads", 0)),
            seed=int(data.get("seed", 0)),
            ci={k: str(v) for k, v in data.get("ci", {}).items()},
        )


@dataclass(frozen=True)
class LayerSize(_Section):
    """One module's share of the shipped file (``compressed_bytes`` is an estimate: its
    tensors compressed alone)."""

    module: str
    type: str
    parameters: int
    nonzero: int
    encodings: Mapping[str, str]  # tensor -> short encoding, e.g. "sparse(bitmask1) raw float32"
    stored_bytes: int
    compressed_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "type": self.type,
            "parameters": self.parameters,
            "nonzero": self.nonzero,
            "encodings": dict(self.encodings),
            "stored_bytes": self.stored_bytes,
            "compressed_bytes": self.compressed_bytes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerSize:
        return cls(
            module=str(data["module"]),
            type=str(data["type"]),
            parameters=int(data["parameters"]),
            nonzero=int(data["nonzero"]),
            encodings={k: str(v) for k, v in data.get("encodings", {}).items()},
            stored_bytes=int(data.get("stored_bytes", 0)),
            compressed_bytes=int(data.get("compressed_bytes", 0)),
        )


@dataclass(frozen=True)
class SizeBreakdown(_Section):
    """Where the shipped bytes go (``packing.file.size_breakdown``), and the teacher's."""

    file_bytes: int
    header_bytes: int
    payload_bytes: int
    payload_raw_bytes: int
    entropy: str  # the payload variant that shipped: auto | none | huffman
    payload_candidates: Mapping[str, int]  # variant -> payload bytes
    layers: tuple[LayerSize, ...]
    note: str
    teacher_file_bytes: int
    # the model's graph (models of custom classes): its zstd'd bytes in the payload, and
    # its JSON before zstd; 0 when the file holds none
    program_bytes: int = 0
    program_raw_bytes: int = 0
    # why a model of custom classes ships without its graph (rebuilt by its factory)
    program_skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_bytes": self.file_bytes,
            "header_bytes": self.header_bytes,
            "payload_bytes": self.payload_bytes,
            "payload_raw_bytes": self.payload_raw_bytes,
            "entropy": self.entropy,
            "payload_candidates": dict(self.payload_candidates),
            "layers": [layer.to_dict() for layer in self.layers],
            "note": self.note,
            "teacher_file_bytes": self.teacher_file_bytes,
            "program_bytes": self.program_bytes,
            "program_raw_bytes": self.program_raw_bytes,
            "program_skipped": self.program_skipped,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SizeBreakdown:
        return cls(
            file_bytes=int(data["file_bytes"]),
            header_bytes=int(data["header_bytes"]),
            payload_bytes=int(data["payload_bytes"]),
            payload_raw_bytes=int(data["payload_raw_bytes"]),
            entropy=str(data["entropy"]),
            payload_candidates={k: int(v) for k, v in data.get("payload_candidates", {}).items()},
            layers=tuple(LayerSize.from_dict(row) for row in data.get("layers", ())),
            note=str(data.get("note", "")),
            teacher_file_bytes=int(data["teacher_file_bytes"]),
            program_bytes=int(data.get("program_bytes", 0)),
            program_raw_bytes=int(data.get("program_raw_bytes", 0)),
            program_skipped=(
                None if data.get("program_skipped") is None else str(data["program_skipped"])
            ),
        )


@dataclass(frozen=True)
class Serving(_Section):
    """Where the student serves (``ship.runtime`` other than torch): the runtime artifact
    that was evaluated and timed, and the ``.ccz`` it was made from.

    ``file_bytes`` (every file the runtime loads) is the shipped size of the report
    (``student.file_bytes``, the compression ratio); ``ccz_bytes`` is the canonical
    student's (``ci_compress.load_student``, the registered file). The teacher is still
    measured in torch fp32: the latency ratio includes the change of runtime.
    """

    runtime: str  # onnxruntime | openvino
    quantize: str  # none | int8
    files: tuple[str, ...]
    file_bytes: int
    sha256: str
    ccz_file: str
    ccz_bytes: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "quantize": self.quantize,
            "files": list(self.files),
            "file_bytes": self.file_bytes,
            "sha256": self.sha256,
            "ccz_file": self.ccz_file,
            "ccz_bytes": self.ccz_bytes,
            "threads": self.threads,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Serving:
        return cls(
            runtime=str(data["runtime"]),
            quantize=str(data["quantize"]),
            files=tuple(str(f) for f in data["files"]),
            file_bytes=int(data["file_bytes"]),
            sha256=str(data["sha256"]),
            ccz_file=str(data["ccz_file"]),
            ccz_bytes=int(data["ccz_bytes"]),
            threads=int(data["threads"]),
        )


@dataclass(frozen=True)
class ExportResult(_Section):
    """One ``ship.export`` format: written and checked against the shipped student
    (``ok``), or ``skipped`` with the exporter's reason."""

    status: str  # ok | skipped
    file: str | None = None
    file_bytes: int | None = None
    agreement: float | None = None  # top-1 agreement with the shipped student
    samples: int | None = None
    max_abs_diff: float | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"status": self.status, "reason": self.reason}
        return {
            "status": self.status,
            "file": self.file,
            "file_bytes": self.file_bytes,
            "agreement": self.agreement,
            "samples": self.samples,
            "max_abs_diff": self.max_abs_diff,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportResult:
        return cls(
            status=str(data["status"]),
            file=_opt_str(data.get("file")),
            file_bytes=_opt_int(data.get("file_bytes")),
            agreement=_opt_float(data.get("agreement")),
            samples=_opt_int(data.get("samples")),
            max_abs_diff=_opt_float(data.get("max_abs_diff")),
            reason=_opt_str(data.get("reason")),
        )


# ---------------------------------------------------------------- the registry and MLflow


@dataclass(frozen=True)
class ChampionRecord(_Section):
    """What the champion's own gate run recorded (each figure when it was recorded)."""

    accuracy: float | None = None
    file_bytes: float | None = None
    holdout_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {
            "accuracy": self.accuracy,
            "file_bytes": self.file_bytes,
            "holdout_sha256": self.holdout_sha256,
        }
        return {k: v for k, v in values.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChampionRecord:
        return cls(
            accuracy=_opt_float(data.get("accuracy")),
            file_bytes=_opt_float(data.get("file_bytes")),
            holdout_sha256=_opt_str(data.get("holdout_sha256")),
        )


@dataclass(frozen=True)
class Baseline(_Section):
    """How the champion baseline was found.

    ``status`` is ``off`` (no registry configured, or MLflow unavailable), ``none`` (no
    version holds the alias yet: champion checks skipped, not failed) or ``compared``
    (that version was re-measured on this holdout; ``recorded`` is what its own run
    recorded).
    """

    status: str  # off | none | compared
    registered_model: str | None = None
    alias: str | None = None
    version: str | None = None
    run_id: str | None = None
    source: str | None = None
    recorded: ChampionRecord | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.status != "off":
            out.update(registered_model=self.registered_model, alias=self.alias)
        if self.status == "compared":
            out.update(
                version=self.version,
                run_id=self.run_id,
                source=self.source,
                recorded=(self.recorded or ChampionRecord()).to_dict(),
            )
        if self.note is not None:
            out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        recorded = data.get("recorded")
        return cls(
            status=str(data.get("status", "off")),
            registered_model=_opt_str(data.get("registered_model")),
            alias=_opt_str(data.get("alias")),
            version=_opt_str(data.get("version")),
            run_id=_opt_str(data.get("run_id")),
            source=_opt_str(data.get("source")),
            recorded=None if recorded is None else ChampionRecord.from_dict(recorded),
            note=_opt_str(data.get("note")),
        )


@dataclass(frozen=True)
class RegistryInfo(_Section):
    """The model version this gate registered, and what happened to the alias."""

    registered_model: str
    version: str
    source: str
    alias: str
    promotion: str  # the reason: default-branch, promote-flag, pull-request, gate-failed, ...
    promoted: bool  # the alias moved to this version (the last write of the gate)
    will_promote: bool  # eligible: the alias moves once everything is recorded
    # The champion this gate compared itself with ("none": no version held the alias).
    compared_with: str = "none"
    # Who held the alias when the gate, under the promotion lock, went to move it (the
    # version it replaced, or the one that moved in meanwhile: promotion champion-moved);
    # None when the gate never went to move it.
    alias_was: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "registered_model": self.registered_model,
            "version": self.version,
            "source": self.source,
            "alias": self.alias,
            "promotion": self.promotion,
            "promoted": self.promoted,
            "will_promote": self.will_promote,
            "compared_with": self.compared_with,
            "alias_was": self.alias_was,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistryInfo:
        return cls(
            registered_model=str(data["registered_model"]),
            version=str(data["version"]),
            source=str(data.get("source", "")),
            alias=str(data["alias"]),
            promotion=str(data.get("promotion", "")),
            promoted=bool(data.get("promoted", False)),
            will_promote=bool(data.get("will_promote", False)),
            compared_with=str(data.get("compared_with", "none")),
            alias_was=None if data.get("alias_was") is None else str(data["alias_was"]),
        )


@dataclass(frozen=True)
class TeacherSource(_Section):
    """Where a ``model.uri`` teacher was downloaded from (the registry version, if any)."""

    uri: str
    registered_model: str | None = None
    version: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri}
        if self.registered_model is not None:
            out.update(
                registered_model=self.registered_model, version=self.version, run_id=self.run_id
            )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TeacherSource:
        return cls(
            uri=str(data["uri"]),
            registered_model=_opt_str(data.get("registered_model")),
            version=_opt_str(data.get("version")),
            run_id=_opt_str(data.get("run_id")),
        )


@dataclass(frozen=True)
class MlflowInfo(_Section):
    """The MLflow run of the gate. ``run_id`` is None when nothing was recorded
    (``mlflow.enabled: false``, ``--fast``, or an unreachable optional server)."""

    run_id: str | None
    tracking_uri: str  # credentials redacted
    experiment: str
    run_url: str | None = None
    teacher_source: TeacherSource | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
        }
        if self.teacher_source is not None:
            out["teacher_source"] = self.teacher_source.to_dict()
        if self.run_url:
            out["run_url"] = self.run_url
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MlflowInfo:
        source = data.get("teacher_source")
        return cls(
            run_id=_opt_str(data.get("run_id")),
            tracking_uri=str(data.get("tracking_uri", "")),
            experiment=str(data.get("experiment", "")),
            run_url=_opt_str(data.get("run_url")),
            teacher_source=None if source is None else TeacherSource.from_dict(source),
        )


@dataclass(frozen=True)
class Artifacts(_Section):
    """The files this gate wrote beside the student (paths as strings)."""

    report_json: str | None = None
    report_md: str | None = None
    junit_xml: str | None = None
    manifest_json: str | None = None
    sensitivity_png: str | None = None
    trend_png: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {
            "report_json": self.report_json,
            "report_md": self.report_md,
            "junit_xml": self.junit_xml,
            "manifest_json": self.manifest_json,
            "sensitivity_png": self.sensitivity_png,
            "trend_png": self.trend_png,
        }
        return {k: v for k, v in values.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Artifacts:
        known = (
            "report_json",
            "report_md",
            "junit_xml",
            "manifest_json",
            "sensitivity_png",
            "trend_png",
        )
        return cls(**{k: str(data[k]) for k in known if data.get(k) is not None})


# ---------------------------------------------------------------- the report


@dataclass(frozen=True)
class Report:
    """One gate: the decision, the figures it was made on, and where it was recorded.

    The first ten fields are what every gate has; the rest are sections a stage may
    not produce (no champion, no registry, no MLflow run, no explain). An absent
    section is None and serialises as ``{}`` (``null`` for ``champion`` and
    ``explain``), as schema 1 always did.
    """

    verdict: str  # pass | fail | inconclusive
    gate: GateResult
    teacher: ModelSummary
    student: ModelSummary
    deltas: Mapping[str, float]
    thresholds: Mapping[str, float]
    passes: Sequence[PassSummary]
    holdout: HoldoutInfo
    environment: Environment
    config: Mapping[str, Any]  # the redacted config dump (see the module docstring)
    mlflow: MlflowInfo | None = None
    artifacts: Artifacts = field(default_factory=Artifacts)
    warnings: Sequence[str] = ()
    size: SizeBreakdown | None = None
    exports: Mapping[str, ExportResult] = field(default_factory=dict)  # torchscript / onnx
    statistics: Statistics | None = None
    # The version holding mlflow.alias when the gate ran, measured on the same holdout.
    champion: ModelSummary | None = None
    baseline: Baseline | None = None
    registry: RegistryInfo | None = None
    per_class: PerClass | None = None
    reproducibility: Mapping[str, Any] = field(default_factory=dict)  # the manifest
    explain: Mapping[str, Any] | None = None  # explain.ExplainResult.to_dict, when run
    # This candidate against the last promoted versions (reporting.trend.build_trend)
    trend: Mapping[str, Any] | None = None
    # The runtime artifact that served the student (ship.runtime other than torch);
    # absent from report.json when the student serves in torch
    serving: Serving | None = None

    @property
    def passed(self) -> bool:
        return self.gate.passed

    @property
    def exit_code(self) -> int:
        """0 pass, 1 gate failed, 5 inconclusive (when thresholds.inconclusive: fail),
        7 passed but not promoted because another gate moved the alias meanwhile."""
        code = self.gate.exit_code
        moved = self.registry is not None and self.registry.promotion == CHAMPION_MOVED
        if code == ExitCode.PASSED and moved:
            return int(ExitCode.CHAMPION_MOVED)
        return code

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
        def section(
            value: _Section | PairedStatistics | PairedScoreStatistics | PerClass | None,
        ) -> dict[str, Any]:
            return {} if value is None else value.to_dict()

        return {
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict,
            "passed": self.gate.passed,
            "gate": self.gate.to_dict(),
            "thresholds": dict(self.thresholds),
            "teacher": self.teacher.to_dict(),
            "student": self.student.to_dict(),
            "deltas": dict(self.deltas),
            "metrics": self.metrics(),
            "passes": [p.to_dict() for p in self.passes],
            "holdout": self.holdout.to_dict(),
            "environment": self.environment.to_dict(),
            "config": self.config,
            "mlflow": section(self.mlflow),
            "artifacts": self.artifacts.to_dict(),
            "warnings": list(self.warnings),
            "size": section(self.size),
            "exports": {fmt: e.to_dict() for fmt, e in self.exports.items()},
            "statistics": section(self.statistics),
            "champion": None if self.champion is None else self.champion.to_dict(),
            "baseline": section(self.baseline),
            "registry": section(self.registry),
            "per_class": section(self.per_class),
            "reproducibility": self.reproducibility,
            "explain": self.explain,
            "trend": self.trend,
            **({} if self.serving is None else {"serving": self.serving.to_dict()}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Rebuild a report from ``report.json`` (the inverse of :meth:`to_dict`).

        Used by the CI renderers (``ci-compress report github|gitlab|jenkins``), which
        render a report written by an earlier ``ci-compress run`` and decide nothing
        themselves. Unknown top-level keys (added by later schema versions) are ignored;
        an empty section is None.
        """

        def optional(key: str, build: Any) -> Any:
            value = data.get(key)
            return build(value) if value else None

        return cls(
            verdict=str(data["verdict"]),
            gate=_gate_from_dict(data["gate"], str(data["verdict"])),
            teacher=ModelSummary.from_dict("teacher", data["teacher"]),
            student=ModelSummary.from_dict("student", data["student"]),
            deltas={k: float(v) for k, v in data["deltas"].items()},
            thresholds={k: float(v) for k, v in data["thresholds"].items()},
            passes=tuple(PassSummary.from_dict(p) for p in data.get("passes", [])),
            holdout=HoldoutInfo.from_dict(data["holdout"]),
            environment=Environment.from_dict(data.get("environment", {})),
            config=dict(data.get("config", {})),
            mlflow=optional("mlflow", MlflowInfo.from_dict),
            artifacts=Artifacts.from_dict(data.get("artifacts") or {}),
            warnings=tuple(str(w) for w in data.get("warnings", [])),
            size=optional("size", SizeBreakdown.from_dict),
            exports={
                fmt: ExportResult.from_dict(e) for fmt, e in (data.get("exports") or {}).items()
            },
            statistics=optional("statistics", statistics_from_dict),
            champion=optional("champion", lambda m: ModelSummary.from_dict("champion", m)),
            baseline=optional("baseline", Baseline.from_dict),
            registry=optional("registry", RegistryInfo.from_dict),
            per_class=optional("per_class", PerClass.from_dict),
            reproducibility=dict(data.get("reproducibility") or {}),
            explain=data.get("explain"),
            trend=data.get("trend"),
            serving=optional("serving", Serving.from_dict),
        )


def _gate_from_dict(gate: Mapping[str, Any], verdict: str) -> GateResult:
    policy = gate.get("policy")
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
    return GateResult(
        passed=bool(gate["passed"]),
        checks=checks,
        verdict=str(gate.get("verdict", verdict)),
        decision=str(gate.get("decision", "point")),
        inconclusive_policy=str(gate.get("inconclusive_policy", "fail")),
        policy_source=None if not policy else str(policy.get("source", "")),
        tightened=tuple(
            Tightened(
                threshold=str(t["threshold"]),
                config=None if t.get("config") is None else float(t["config"]),
                policy=float(t["policy"]),
                used=float(t["used"]),
            )
            for t in (policy or {}).get("loosened", [])
        ),
    )


def report_from_dict(data: Mapping[str, Any]) -> Report:
    """:meth:`Report.from_dict` (the name the CI renderers import)."""
    return Report.from_dict(data)


def read_report_json(path: Path, *, hint: str) -> Any:
    """Parse a report.json (or manifest.json) a user named: a missing or malformed file is
    one ``InputError`` line (exit 3) with ``hint``, never a traceback."""

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"report not found: {path}", hint=hint) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path} as JSON: {e}", hint=hint) from None
