"""The stage: load -> compress -> pack -> reload -> evaluate -> gate -> record -> report.

:func:`run` does the work and returns a :class:`~ci_compress.report.Report`; it never
prints or exits. The student that is evaluated is the one rebuilt from the shipped
packed file, never the in-memory copy the passes produced.
"""

from __future__ import annotations

import copy
import os
import platform
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.ci.env import CIContext, detect
from ci_compress.config import LoadedConfig, flatten
from ci_compress.errors import CICompressError, TrackingError
from ci_compress.gate import class_drops, decide, derive, worst_class
from ci_compress.manifest import build_manifest
from ci_compress.report import ModelSummary, Report
from ci_compress.tracking import MlflowTracker, NullTracker, Tracker, resolve_tracking_uri

if TYPE_CHECKING:
    from torch import nn

    from ci_compress.artifacts.data import Dataset
    from ci_compress.artifacts.models import LoadedModel
    from ci_compress.artifacts.packing import PackInfo
    from ci_compress.config import PassConfig
    from ci_compress.evaluation.metrics import TaskMetrics
    from ci_compress.passes.base import PassRecord

Progress = Callable[[str], None]


def set_determinism(seed: int, threads: int) -> None:
    """Seeds, thread count and deterministic algorithms: same inputs, same numbers."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_tracker(loaded: LoadedConfig, environ: Mapping[str, str], progress: Progress) -> Tracker:
    cfg = loaded.config.mlflow
    if not cfg.enabled:
        return NullTracker()
    uri = resolve_tracking_uri(cfg.tracking_uri, environ, loaded.base_dir)
    try:
        tracker = MlflowTracker(uri, artifact_root=loaded.base_dir / "mlartifacts")
        tracker.check(cfg.experiment)
    except TrackingError as e:
        if cfg.required:
            raise
        progress(f"warning: {e.message}; continuing without MLflow (mlflow.required: false)")
        return NullTracker()
    return tracker


def run(
    loaded: LoadedConfig,
    *,
    tracker: Tracker | None = None,
    environ: Mapping[str, str] | None = None,
    report_dir: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Run the whole gate for one config and return its report."""
    environ = os.environ if environ is None else environ
    warnings: list[str] = []

    def say(msg: str) -> None:
        if msg.startswith("warning:"):
            warnings.append(msg.removeprefix("warning: "))
        if progress is not None:
            progress(msg)

    cfg = loaded.config
    out_dir = report_dir or loaded.resolve(cfg.report.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = tracker or make_tracker(loaded, environ, say)
    ci = detect(environ, loaded.base_dir)
    run_name = cfg.mlflow.run_name or f"gate-{(ci.commit or 'local')[:8]}"
    run_id = tracker.start_run(
        cfg.mlflow.experiment, run_name, {**ci.tags(), "ci_compress.status": "running"}
    )
    try:
        report = _gate(loaded, out_dir, ci, say)
        when = cfg.explain.when
        if when == "always" or (when == "fail" and not report.passed):
            from ci_compress.explain import explain, write_chart

            say("explaining: per-layer sensitivity")
            result = explain(loaded, report_dir=out_dir, progress=say)
            report.explain = result.to_dict()
            report.artifacts["sensitivity_png"] = str(
                write_chart(result, out_dir / "sensitivity.png")
            )
        report.warnings = warnings
        report.mlflow = {
            "run_id": run_id,
            "tracking_uri": getattr(tracker, "shown_uri", tracker.uri),
            "experiment": cfg.mlflow.experiment,
        }
        url = tracker.run_url()
        if url:
            report.mlflow["run_url"] = url
        say("recording in MLflow")
        tracker.log_params(flatten(report.config))
        tracker.log_metrics(report.metrics())
        for rec in report.passes:
            tracker.log_metrics(
                {f"pass.{k}": float(rec[k]) for k in _PASS_METRICS}, step=int(rec["index"])
            )
        from ci_compress.reporting.render import write_reports

        paths = write_reports(report, out_dir)
        for key in ("report_json", "report_md", "manifest_json"):
            if key in paths:
                tracker.log_artifact(paths[key])
        if report.artifacts.get("sensitivity_png"):
            tracker.log_artifact(Path(report.artifacts["sensitivity_png"]))
        tracker.log_artifact(Path(report.student.file), "student")
        if loaded.source is not None:
            tracker.log_artifact(loaded.source, "config")
        tracker.set_tags({"ci_compress.status": "done", "ci_compress.verdict": report.verdict})
        tracker.end_run("FINISHED")
        return report
    except BaseException:
        try:
            tracker.set_tags({"ci_compress.status": "failed"})
            tracker.end_run("FAILED")
        except CICompressError:
            pass
        raise


_PASS_METRICS = ("params_before", "params_after", "nonzero_before", "nonzero_after", "seconds")


def _gate(loaded: LoadedConfig, out_dir: Path, ci: CIContext, say: Progress) -> Report:
    import torch

    from ci_compress.evaluation.metrics import evaluate, per_class_table
    from ci_compress.evaluation.performance import latency_ms, model_memory_bytes
    from ci_compress.passes.base import count_parameters

    cfg = loaded.config
    rt = cfg.runtime
    set_determinism(rt.seed, rt.threads)

    say("loading the model and the holdout")
    inputs = load_inputs(loaded, out_dir)
    teacher, holdout = inputs.teacher, inputs.holdout

    student, records = apply_passes(loaded, inputs, cfg.passes, say)
    pass_history = [r.to_dict() for r in records]

    say("packing the student and reading it back")
    shipped_path = out_dir / cfg.ship.filename
    shipped, info = ship(loaded, student, pass_history, shipped_path)

    say(f"evaluating on {holdout.name}")
    task = evaluate(
        {"teacher": teacher.module, "student": shipped}, holdout, batch_size=cfg.data.batch_size
    )
    x_lat = next(holdout.batches(rt.latency_batch_size))[0]
    lat = latency_ms(
        {"teacher": teacher.module, "student": shipped},
        x_lat,
        repeats=rt.latency_repeats,
        warmup=rt.latency_warmup,
    )

    def measure(role: str, model: torch.nn.Module, file_bytes: int) -> dict[str, float]:
        params, nonzero = count_parameters(model)
        m = task[role]
        out: dict[str, float] = {
            "accuracy": m.accuracy,
            "correct": float(m.correct),
            "samples": float(m.samples),
            "file_bytes": float(file_bytes),
            "parameters": float(params),
            "nonzero_parameters": float(nonzero),
            "sparsity": 1.0 - nonzero / params if params else 0.0,
            "latency_ms": lat[role],
            "memory_bytes": float(model_memory_bytes(model)),
        }
        if m.agreement is not None:
            out["agreement"] = m.agreement
        return out

    t_metrics = measure("teacher", teacher.module, teacher.file_bytes)
    s_metrics = measure("student", shipped, info.file_bytes)
    flat = {f"teacher.{k}": v for k, v in t_metrics.items()} | {
        f"student.{k}": v for k, v in s_metrics.items()
    }
    deltas = derive(flat)
    thresholds = cfg.thresholds.active()
    class_delta, notes = class_figures(
        task["teacher"], task["student"], limit=thresholds.get("max_class_drop")
    )
    deltas.update(class_delta)
    result = decide(thresholds, {**flat, **deltas}, notes=notes)
    holdout_digest = holdout.digest()
    per_class = per_class_table(task)
    if "max_class_drop" in thresholds and per_class:
        limit = thresholds["max_class_drop"]
        per_class["max_class_drop"] = limit
        per_class["flagged"] = [
            row["label"] for row in per_class["classes"] if row["drop_points"]["student"] > limit
        ]

    import numpy
    import torch as _torch

    from ci_compress import __version__

    return Report(
        verdict="pass" if result.passed else "fail",
        gate=result,
        teacher=ModelSummary(
            "teacher", str(teacher.path), teacher.file_bytes, teacher.sha256, t_metrics
        ),
        student=ModelSummary("student", str(shipped_path), info.file_bytes, info.sha256, s_metrics),
        deltas=deltas,
        thresholds=thresholds,
        passes=pass_history,
        holdout={
            "name": holdout.name,
            "samples": task["teacher"].samples,
            "sha256": holdout_digest,
        },
        environment=_environment(
            ci, rt.threads, rt.seed, __version__, _torch.__version__, numpy.__version__
        ),
        config=cfg.model_dump(mode="json"),
        per_class=per_class,
        reproducibility=build_manifest(
            loaded,
            model_file=str(teacher.path),
            model_sha256=teacher.sha256,
            holdout_name=holdout.name,
            holdout_sha256=holdout_digest,
            holdout_samples=task["teacher"].samples,
            student_sha256=info.sha256,
            pass_history=pass_history,
            measurements={**flat, **deltas},
            per_class=per_class,
            verdict="pass" if result.passed else "fail",
        ),
    )


@dataclass
class Inputs:
    """What a gate reads: the teacher and the data sets, loaded and checked."""

    teacher: LoadedModel
    holdout: Dataset
    train: Dataset | None
    calibration: Dataset | None


def load_inputs(loaded: LoadedConfig, out_dir: Path) -> Inputs:
    """Load the teacher and the data sets the config names (downloads go under out_dir)."""
    from ci_compress.artifacts.data import load_dataset
    from ci_compress.artifacts.models import resolve_model

    cfg = loaded.config
    teacher = resolve_model(cfg.model, loaded.base_dir, out_dir / "downloads")
    holdout = load_dataset(cfg.data.holdout, loaded.base_dir, field="data.holdout")
    train = (
        load_dataset(cfg.data.train, loaded.base_dir, field="data.train")
        if cfg.data.train
        else None
    )
    calib = (
        load_dataset(cfg.data.calibration, loaded.base_dir, field="data.calibration")
        if cfg.data.calibration
        else None
    )
    return Inputs(teacher=teacher, holdout=holdout, train=train, calibration=calib)


def apply_passes(
    loaded: LoadedConfig,
    inputs: Inputs,
    passes: Sequence[PassConfig],
    say: Progress | None = None,
) -> tuple[nn.Module, list[PassRecord]]:
    """A copy of the teacher with ``passes`` applied in order (the teacher is untouched).

    Each pass is seeded with ``runtime.seed + index``, so the same passes give the same
    student; ``explain`` calls this with passes restricted to one layer.
    """
    import torch

    from ci_compress.passes import PASSES
    from ci_compress.passes.base import PassContext, apply_pass

    cfg = loaded.config
    rt = cfg.runtime
    train, calib = inputs.train, inputs.calibration
    student = copy.deepcopy(inputs.teacher.module)
    records = []
    for i, pass_cfg in enumerate(passes):
        if say is not None:
            say(f"pass {i + 1}/{len(passes)}: {pass_cfg.type}")
        ctx = PassContext(
            seed=rt.seed + i,
            index=i,
            train_data=(lambda d=train: d.batches(cfg.data.batch_size)) if train else None,
            calibration_data=(lambda d=calib: d.batches(cfg.data.batch_size)) if calib else None,
            teacher=inputs.teacher.module,
        )
        torch.manual_seed(rt.seed + i)
        student, record = apply_pass(PASSES[pass_cfg.type], student, pass_cfg, ctx)
        records.append(record)
    return student, records


def ship(
    loaded: LoadedConfig, student: nn.Module, pass_history: list[dict[str, Any]], path: Path
) -> tuple[nn.Module, PackInfo]:
    """Write the packed file and rebuild the model from it: the student as it ships.

    Pass timings are left out of the packed file so that the same passes give the same
    bytes (the report keeps them).
    """
    from ci_compress.artifacts.models import _factory
    from ci_compress.artifacts.packing import load_packed, pack

    cfg = loaded.config
    info = pack(
        student,
        path,
        passes=[{k: v for k, v in p.items() if k != "seconds"} for p in pass_history],
        factory=cfg.model.factory,
        level=cfg.ship.zstd_level,
    )
    shipped, _ = load_packed(path, factory=_factory(cfg.model))
    return shipped, info


def class_figures(
    teacher: TaskMetrics, student: TaskMetrics, *, limit: float | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """The worst per-class drop (``delta.max_class_drop_points``) and a note naming the
    class, and every other class over ``limit`` when one is given."""
    drops = class_drops(teacher.class_accuracy(), student.class_accuracy())
    worst = worst_class(drops)
    if worst is None:
        return {}, {}
    label, drop = worst
    note = f"class {label}"
    others = [
        k
        for k in sorted(drops, key=_label_order)
        if k != label and limit is not None and drops[k] > limit
    ]
    if others:
        note += f"; also over the limit: class {', '.join(others)}"
    return {"delta.max_class_drop_points": drop}, {"delta.max_class_drop_points": note}


def _label_order(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def _environment(
    ci: CIContext, threads: int, seed: int, version: str, torch_version: str, numpy_version: str
) -> dict[str, Any]:
    return {
        "ci_compress": version,
        "torch": torch_version,
        "numpy": numpy_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads,
        "seed": seed,
        "ci": {k: v for k, v in vars(ci).items() if v is not None},
    }
