"""The stage: load -> compress -> pack -> reload -> evaluate -> gate -> record -> report.

:func:`run` does the work and returns a :class:`~ci_compress.report.Report`; it never
prints or exits. The student that is evaluated is the one rebuilt from the shipped
packed file, never the in-memory copy the passes produced.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ci_compress.ci.env import CIContext, detect
from ci_compress.config import LoadedConfig, flatten
from ci_compress.errors import CICompressError, TrackingError
from ci_compress.gate import decide, derive
from ci_compress.report import ModelSummary, Report
from ci_compress.tracking import MlflowTracker, NullTracker, Tracker, resolve_tracking_uri

Progress = Callable[[str], None]


def set_determinism(seed: int, threads: int) -> None:
    """Seeds, thread count and deterministic algorithms: same inputs, same numbers."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # may only be set before any inter-op parallel work has started
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


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
        tracker.log_params(flatten(report.config))  # report.config is redacted
        tracker.log_metrics(report.metrics())
        for rec in report.passes:
            tracker.log_metrics(
                {f"pass.{k}": float(rec[k]) for k in _PASS_METRICS}, step=int(rec["index"])
            )
        from ci_compress.reporting.render import write_reports

        paths = write_reports(report, out_dir)
        for key in ("report_json", "report_md"):
            tracker.log_artifact(paths[key])
        tracker.log_artifact(Path(report.student.file), "student")
        for export in report.exports.values():
            if export.get("status") == "ok":
                tracker.log_artifact(Path(export["file"]), "student")
        if loaded.source is not None:
            tracker.log_artifact(_redacted_copy(loaded.source, out_dir), "config")
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

    from ci_compress.artifacts.data import load_dataset
    from ci_compress.artifacts.models import resolve_model
    from ci_compress.artifacts.packing import pack
    from ci_compress.passes import PASSES
    from ci_compress.passes.base import PassContext, apply_pass

    cfg = loaded.config
    rt = cfg.runtime
    set_determinism(rt.seed, rt.threads)

    if cfg.ship.export:
        from ci_compress.artifacts.export import check_available

        check_available(cfg.ship.export)

    say("loading the model and the holdout")
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

    student = copy.deepcopy(teacher.module)
    records = []
    for i, pass_cfg in enumerate(cfg.passes):
        say(f"pass {i + 1}/{len(cfg.passes)}: {pass_cfg.type}")
        ctx = PassContext(
            seed=rt.seed + i,
            index=i,
            train_data=(lambda d=train: d.batches(cfg.data.batch_size)) if train else None,
            calibration_data=(lambda d=calib: d.batches(cfg.data.batch_size)) if calib else None,
            teacher=teacher.module,
        )
        torch.manual_seed(rt.seed + i)
        student, record = apply_pass(PASSES[pass_cfg.type], student, pass_cfg, ctx)
        records.append(record)
    pass_history = [r.to_dict() for r in records]

    say("packing the student and reading it back")
    shipped_path = out_dir / cfg.ship.filename
    # Timings stay out of the shipped file: same inputs, byte-identical file.
    info = pack(
        student,
        shipped_path,
        passes=[{k: v for k, v in p.items() if k != "seconds"} for p in pass_history],
        factory=cfg.model.factory,
        level=cfg.ship.zstd_level,
    )
    try:
        return _evaluate_and_decide(
            loaded, ci, say, teacher, holdout, shipped_path, info, pass_history
        )
    except BaseException:
        # The tool could not decide: leave no un-gated student where a later step
        # (an upload, a promotion) could pick it up as if it had been checked.
        shipped_path.unlink(missing_ok=True)
        raise


def _evaluate_and_decide(
    loaded: LoadedConfig,
    ci: CIContext,
    say: Progress,
    teacher: Any,
    holdout: Any,
    shipped_path: Path,
    info: Any,
    pass_history: list[dict[str, Any]],
) -> Report:
    import torch

    from ci_compress.artifacts.models import _factory
    from ci_compress.artifacts.packing import load_packed, size_breakdown
    from ci_compress.evaluation.metrics import evaluate
    from ci_compress.evaluation.performance import latency_ms, model_memory_bytes
    from ci_compress.evaluation.statistics import paired_statistics
    from ci_compress.passes.base import count_parameters
    from ci_compress.redaction import redact_data

    cfg = loaded.config
    rt = cfg.runtime
    shipped, _ = load_packed(shipped_path, factory=_factory(cfg.model))

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
            "bits_per_weight": 8 * file_bytes / params if params else 0.0,
        }
        if m.agreement is not None:
            out["agreement"] = m.agreement
        return out

    t_metrics = measure("teacher", teacher.module, teacher.file_bytes)
    s_metrics = measure("student", shipped, info.file_bytes)
    size = size_breakdown(shipped, info)
    size["teacher_file_bytes"] = teacher.file_bytes
    exports: dict[str, Any] = {}
    if cfg.ship.export:
        from ci_compress.artifacts.export import export_all

        say(f"exporting the student: {', '.join(cfg.ship.export)}")
        exports = export_all(
            shipped,
            cfg.ship.export,
            shipped_path.parent,
            shipped_path.name.removesuffix(".ccz"),
            x_lat,
            lambda: holdout.batches(cfg.data.batch_size),
        )
        for fmt, e in exports.items():
            if e["status"] == "ok":
                s_metrics[f"{fmt}_agreement"] = e["agreement"]
            else:
                say(f"warning: {fmt} export skipped: {e['reason']}")
    flat = {f"teacher.{k}": v for k, v in t_metrics.items()} | {
        f"student.{k}": v for k, v in s_metrics.items()
    }
    deltas = derive(flat)
    th = cfg.thresholds
    stats = paired_statistics(
        task["teacher"].correct_mask,  # type: ignore[arg-type]
        task["student"].correct_mask,  # type: ignore[arg-type]
        confidence=th.confidence,
        resamples=th.bootstrap_resamples,
        seed=rt.seed,
    )
    deltas.update(stats.deltas())
    thresholds = th.active()
    result = decide(
        thresholds,
        {**flat, **deltas},
        decision=th.decision,
        confidence=th.confidence,
        inconclusive=th.inconclusive,
    )
    if result.verdict == "inconclusive":
        say(
            "warning: the holdout is too small to decide at "
            f"{th.confidence:.0%} confidence: "
            + "; ".join(c.message for c in result.undecided)
            + f" (thresholds.inconclusive: {th.inconclusive})"
            if th.inconclusive != "pass"
            else "the gate is inconclusive; thresholds.inconclusive: pass lets it through"
        )

    import numpy
    import torch as _torch

    from ci_compress import __version__

    return Report(
        verdict=result.verdict,
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
            "sha256": holdout.digest(),
        },
        environment=_environment(
            ci, rt.threads, rt.seed, __version__, _torch.__version__, numpy.__version__
        ),
        config=redact_data(cfg.model_dump(mode="json")),
        size=size,
        exports=exports,
        statistics=stats.to_dict(),
    )


def _redacted_copy(source: Path, out_dir: Path) -> Path:
    """The config file as written, or a redacted copy when it holds a secret."""
    from ci_compress.redaction import redact

    text = source.read_text(encoding="utf-8")
    clean = redact(text)
    if clean == text:
        return source
    copy_dir = out_dir / "config"
    copy_dir.mkdir(parents=True, exist_ok=True)
    target = copy_dir / source.name
    target.write_text(clean, encoding="utf-8")
    return target


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
