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
EarlyStop = Callable[[Mapping[str, float]], None]


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
        from ci_compress.reporting.render import write_reports

        paths = write_reports(report, out_dir)
        for key in ("report_json", "report_md"):
            tracker.log_artifact(paths[key])
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


def evaluate(
    loaded: LoadedConfig,
    *,
    report_dir: Path,
    environ: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    early_stop: EarlyStop | None = None,
) -> Report:
    """Compress, pack, reload, evaluate and gate one config, without MLflow or report files.

    The student is written to ``report_dir``. ``early_stop`` is called with the task
    and size measurements before latency is measured; it may raise to abandon a
    hopeless candidate (``ci-compress tune`` prunes trials this way).
    """
    environ = os.environ if environ is None else environ
    report_dir.mkdir(parents=True, exist_ok=True)
    ci = detect(environ, loaded.base_dir)
    return _gate(loaded, report_dir, ci, progress or (lambda _msg: None), early_stop=early_stop)


def _gate(
    loaded: LoadedConfig,
    out_dir: Path,
    ci: CIContext,
    say: Progress,
    *,
    early_stop: EarlyStop | None = None,
) -> Report:
    import torch

    from ci_compress.artifacts.data import load_dataset
    from ci_compress.artifacts.models import _factory, resolve_model
    from ci_compress.artifacts.packing import load_packed, pack
    from ci_compress.evaluation.metrics import evaluate
    from ci_compress.evaluation.performance import latency_ms, model_memory_bytes
    from ci_compress.passes import PASSES
    from ci_compress.passes.base import PassContext, count_parameters, run_pass

    cfg = loaded.config
    rt = cfg.runtime
    set_determinism(rt.seed, rt.threads)

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
        records.append(run_pass(PASSES[pass_cfg.type], student, pass_cfg, ctx))
    pass_history = [r.to_dict() for r in records]

    say("packing the student and reading it back")
    shipped_path = out_dir / cfg.ship.filename
    info = pack(
        student,
        shipped_path,
        passes=pass_history,
        factory=cfg.model.factory,
        level=cfg.ship.zstd_level,
    )
    shipped, _ = load_packed(shipped_path, factory=_factory(cfg.model))

    say(f"evaluating on {holdout.name}")
    task = evaluate(
        {"teacher": teacher.module, "student": shipped}, holdout, batch_size=cfg.data.batch_size
    )
    if early_stop is not None:
        known = {
            "teacher.accuracy": task["teacher"].accuracy,
            "student.accuracy": task["student"].accuracy,
            "teacher.file_bytes": float(teacher.file_bytes),
            "student.file_bytes": float(info.file_bytes),
        }
        early_stop({**known, **derive(known)})
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
    result = decide(thresholds, {**flat, **deltas})

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
            "sha256": holdout.digest(),
        },
        environment=_environment(
            ci, rt.threads, rt.seed, __version__, _torch.__version__, numpy.__version__
        ),
        config=cfg.model_dump(mode="json"),
    )


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
