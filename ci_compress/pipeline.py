"""The stage: load -> compress -> pack -> reload -> evaluate -> gate -> record -> report.

:func:`run` does the work and returns a :class:`~ci_compress.report.Report`; it never
prints or exits. The student that is evaluated is the one rebuilt from the shipped
packed file, never the in-memory copy the passes produced.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.ci.env import CIContext, detect
from ci_compress.config import LoadedConfig, flatten, to_mapping
from ci_compress.errors import CICompressError, ConfigError
from ci_compress.evaluation.classes import class_figures, per_class_table
from ci_compress.evaluation.metrics import score
from ci_compress.evaluation.performance import latency_ms, model_memory_bytes
from ci_compress.evaluation.statistics import paired_statistics
from ci_compress.explain import explain
from ci_compress.files import atomic_write
from ci_compress.gate import decide, derive
from ci_compress.layers.inspect import count_parameters
from ci_compress.loading.data import HoldoutDigest
from ci_compress.loading.models import load_model_file
from ci_compress.packing.export import check_available, export_all
from ci_compress.packing.file import size_breakdown
from ci_compress.progress import Step, step_of
from ci_compress.redaction import redact, redact_data
from ci_compress.report import ModelSummary, Report
from ci_compress.reporting.explain import write_chart
from ci_compress.reporting.render import write_reports
from ci_compress.reproducibility import build_manifest
from ci_compress.stages import Inputs, Shipped, apply_passes, load_inputs, set_determinism, ship
from ci_compress.tracking import (
    ModelVersionRef,
    NullTracker,
    Tracker,
    make_tracker,
    model_fetcher,
)
from ci_compress.versions import versions

if TYPE_CHECKING:
    pass

Progress = Callable[[str], None]
EarlyStop = Callable[[Mapping[str, float]], None]


def promotion_decision(
    *, passed: bool, ci: CIContext, promote: bool, registered: bool, verdict: str = "pass"
) -> tuple[bool, str]:
    """Whether this gate moves the alias, and why (recorded as a version tag).

    Only a passing gate moves it: in CI on the default branch, or locally with
    ``--promote``. A PR/MR build never moves it, whatever the flags say. An
    inconclusive gate that the config lets through (``thresholds.inconclusive:
    warn|pass``) does not block the merge, but it never promotes either.
    """
    if not registered:
        return False, "not-registered"
    if not passed:
        return False, "gate-failed"
    if verdict == "inconclusive":
        return False, "inconclusive"
    if ci.is_pull_request:
        return False, "pull-request"
    if promote:
        return True, "promote-flag"
    if ci.is_ci and ci.on_default_branch:
        return True, "default-branch"
    if ci.is_ci:
        return False, "not-default-branch"
    return False, "local-run"


def run(
    loaded: LoadedConfig,
    *,
    tracker: Tracker | None = None,
    environ: Mapping[str, str] | None = None,
    report_dir: Path | None = None,
    progress: Progress | None = None,
    promote: bool = False,
) -> Report:
    """Run the whole gate for one config and return its report.

    Order of the MLflow writes, so that no failure leaves a half-done promotion: run
    params, metrics, holdout input and student artifact; the new model version (waited
    for until READY); the reports; the run marked FINISHED; and only then, last, the
    alias moves. Any failure before that leaves the alias where it was and marks the
    run FAILED (when the server still answers).
    """
    environ = os.environ if environ is None else environ
    warnings: list[str] = []

    def say(msg: str) -> None:
        if msg.startswith("warning:"):
            warnings.append(msg.removeprefix("warning: "))
        if progress is not None:
            progress(msg)

    cfg = loaded.config
    ci = detect(environ, loaded.base_dir)
    registered_model = cfg.mlflow.registered_model if cfg.mlflow.enabled else None
    alias = cfg.mlflow.alias
    if promote and ci.is_pull_request:
        raise ConfigError(
            f"a pull/merge request build (#{ci.pr_number}) never moves the alias {alias!r}",
            path="--promote",
            hint="drop --promote; the alias moves when the change is merged and the gate passes on the default branch",
        )
    if promote and not registered_model:
        raise ConfigError(
            "--promote needs a registry to promote in",
            path="mlflow.registered_model",
            hint="set mlflow.registered_model (and mlflow.enabled: true)",
        )
    out_dir = report_dir or loaded.resolve(cfg.report.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = tracker or make_tracker(loaded, environ, say)
    offline = isinstance(tracker, NullTracker)
    if registered_model and offline:
        say(
            "warning: MLflow is not available: no registration, no promotion, champion checks skipped"
        )
    fetched: dict[str, Any] = {}
    fetch = model_fetcher(loaded, environ, tracker, fetched)
    run_name = cfg.mlflow.run_name or f"gate-{(ci.commit or 'local')[:8]}"
    run_id = tracker.start_run(
        cfg.mlflow.experiment, run_name, {**ci.tags(), "ci_compress.status": "running"}
    )
    version: ModelVersionRef | None = None
    promoted = False
    try:
        champion: ModelVersionRef | None = None
        champion_file: Path | None = None
        baseline: dict[str, Any] = {"status": "off"}
        if registered_model and not offline:
            say(f"looking up {registered_model}@{alias}")
            champion = tracker.champion(registered_model, alias)
            baseline = {"status": "none", "registered_model": registered_model, "alias": alias}
            if champion is None:
                baseline["note"] = (
                    f"no version of {registered_model} holds @{alias} yet: "
                    "champion checks skipped (not failed)"
                )
            else:
                champion_file = tracker.fetch(
                    f"models:/{registered_model}/{champion.version}", out_dir / "champion"
                ).path
        report = _gate(
            loaded,
            out_dir,
            ci,
            say,
            fetch=fetch,
            champion_file=champion_file,
            step=step_of(progress),
        )
        if champion is not None and report.champion is not None:
            baseline = _baseline(champion, alias, tracker, report, say)
        report.baseline = baseline
        when = cfg.explain.when
        if when == "always" or (when == "fail" and not report.passed):
            say("explaining: per-layer sensitivity")
            result = explain(loaded, report_dir=out_dir, progress=say, fetch=fetch)
            report.explain = result.to_dict()
            report.artifacts["sensitivity_png"] = str(
                write_chart(result.to_dict(), out_dir / "sensitivity.png")
            )
        report.warnings = warnings
        report.mlflow = {
            "run_id": run_id,
            "tracking_uri": getattr(tracker, "shown_uri", tracker.uri),
            "experiment": cfg.mlflow.experiment,
        }
        if fetched:
            report.mlflow["teacher_source"] = fetched
        url = tracker.run_url()
        if url:
            report.mlflow["run_url"] = url
        eligible, reason = promotion_decision(
            passed=report.passed,
            ci=ci,
            promote=promote,
            registered=bool(registered_model) and not offline,
            verdict=report.verdict,
        )
        say("recording in MLflow")
        tracker.log_params(flatten(report.config))  # report.config is redacted
        tracker.log_metrics(report.metrics())
        for rec in report.passes:
            tracker.log_metrics(
                {f"pass.{k}": float(rec[k]) for k in _PASS_METRICS}, step=int(rec["index"])
            )
        tracker.log_dataset(_dataset_info(loaded, report))
        tracker.set_tags({"ci_compress.holdout_sha256": str(report.holdout["sha256"])})
        tracker.log_artifact(Path(report.student.file), "student")
        for export in report.exports.values():
            if export.get("status") == "ok":
                tracker.log_artifact(Path(export["file"]), "student")
        if loaded.source is not None:
            tracker.log_artifact(_redacted_copy(loaded.source, out_dir), "config")
        if registered_model and not offline:
            say(f"registering the student as a new version of {registered_model}")
            version = tracker.register(
                registered_model,
                "student",
                _version_tags(report, ci, reason, eligible, champion),
            )
            report.registry = {
                "registered_model": registered_model,
                "version": version.version,
                "source": version.source,
                "alias": alias,
                "promotion": reason,
                "promoted": False,
                "will_promote": eligible,
            }
            tracker.set_tags({"ci_compress.registered_version": version.version})

        paths = write_reports(report, out_dir)
        for key in ("report_json", "report_md", "junit_xml", "manifest_json"):
            if key in paths:
                tracker.log_artifact(paths[key])
        if report.artifacts.get("sensitivity_png"):
            tracker.log_artifact(Path(report.artifacts["sensitivity_png"]))
        tracker.set_tags({"ci_compress.status": "done", "ci_compress.verdict": report.verdict})
        tracker.end_run("FINISHED")
        if eligible and version is not None and registered_model:
            # Last write: everything the alias will point at is recorded and READY.
            say(f"moving @{alias} of {registered_model} to version {version.version}")
            tracker.set_alias(registered_model, alias, version.version)
            promoted = True
            report.registry["promoted"] = True
            write_reports(report, out_dir)  # the local copy says it happened
        return report
    except BaseException:
        if promoted:  # everything was recorded; only the local report rewrite failed
            raise
        with tracker.cleanup():
            try:
                tracker.set_tags({"ci_compress.status": "failed"})
                tracker.end_run("FAILED")
                if version is not None and registered_model:
                    tracker.set_version_tags(
                        registered_model, version.version, {"ci_compress.status": "failed"}
                    )
            except CICompressError:
                pass
        raise


_PASS_METRICS = ("params_before", "params_after", "nonzero_before", "nonzero_after", "seconds")


def evaluate(
    loaded: LoadedConfig,
    *,
    report_dir: Path,
    environ: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    early_stop: EarlyStop | None = None,
    fetch: Callable[[str, Path], Path] | None = None,
) -> Report:
    """Compress, pack, reload, evaluate and gate one config, without MLflow or report files.

    The student is written to ``report_dir``. ``early_stop`` is called with the task
    and size measurements before latency is measured; it may raise to abandon a
    hopeless candidate (``ci-compress tune`` prunes trials this way). A ``model.uri``
    teacher comes from ``fetch`` (tune passes the file it downloaded once), else it is
    downloaded from the configured MLflow server (nothing is recorded there).
    """
    environ = os.environ if environ is None else environ
    report_dir.mkdir(parents=True, exist_ok=True)
    ci = detect(environ, loaded.base_dir)
    fetch = fetch or model_fetcher(loaded, environ, NullTracker(), {})
    return _gate(
        loaded,
        report_dir,
        ci,
        progress or (lambda _msg: None),
        fetch=fetch,
        early_stop=early_stop,
    )


def _baseline(
    champion: ModelVersionRef, alias: str, tracker: Tracker, report: Report, say: Progress
) -> dict[str, Any]:
    """What is known about the champion: re-measured now, and what its own run recorded."""
    assert report.champion is not None
    out: dict[str, Any] = {
        "status": "compared",
        "registered_model": champion.name,
        "alias": alias,
        "version": champion.version,
        "run_id": champion.run_id,
        "source": champion.source,
    }
    recorded = tracker.run_record(champion.run_id) if champion.run_id else {}
    metrics = recorded.get("metrics", {})
    tags = recorded.get("tags", {})
    out["recorded"] = {
        k: v
        for k, v in {
            "accuracy": metrics.get("student.accuracy"),
            "file_bytes": metrics.get("student.file_bytes"),
            "holdout_sha256": tags.get("ci_compress.holdout_sha256"),
        }.items()
        if v is not None
    }
    rec_holdout = tags.get("ci_compress.holdout_sha256")
    rec_acc = metrics.get("student.accuracy")
    if rec_holdout and rec_holdout != report.holdout["sha256"]:
        out["note"] = (
            f"version {champion.version} was gated on another holdout "
            f"(sha256 {rec_holdout[:12]}); both are compared on this one"
        )
    elif rec_acc is not None and abs(rec_acc - report.champion.metrics["accuracy"]) > 1e-9:
        say(
            f"warning: champion version {champion.version} recorded accuracy {rec_acc:.4%} "
            f"but measures {report.champion.metrics['accuracy']:.4%} on the same holdout now "
            "(library versions changed?); the gate uses the new measurement"
        )
    return out


def _version_tags(
    report: Report,
    ci: CIContext,
    reason: str,
    eligible: bool,
    champion: ModelVersionRef | None,
) -> dict[str, str]:
    import json

    tags = {
        "ci_compress.verdict": report.verdict,
        "ci_compress.thresholds": json.dumps(report.thresholds, sort_keys=True),
        "ci_compress.promotion": reason,
        "ci_compress.student_sha256": report.student.sha256,
        "ci_compress.holdout_sha256": str(report.holdout["sha256"]),
        "ci_compress.baseline_version": champion.version if champion else "none",
        **{f"ci_compress.threshold.{k}": repr(v) for k, v in report.thresholds.items()},
        **ci.tags(),
    }
    if report.passed and not eligible:
        tags["candidate"] = "true"
    return tags


def _dataset_info(loaded: LoadedConfig, report: Report) -> dict[str, Any]:
    src = loaded.config.data.holdout
    info: dict[str, Any] = {
        "name": report.holdout["name"],
        "sha256": report.holdout["sha256"],
        "samples": report.holdout["samples"],
    }
    if src.builtin:
        info.update(source_type="code", source={"builtin": src.builtin, "split": src.split})
    elif src.path:
        info.update(source_type="local", source={"uri": str(loaded.resolve(src.path))})
    else:
        info.update(source_type="code", source={"factory": src.factory})
    if report.holdout.get("x_shape") is not None:
        info["schema_shapes"] = {
            "x_shape": report.holdout["x_shape"],
            "x_dtype": report.holdout["x_dtype"],
            "y_dtype": report.holdout["y_dtype"],
        }
    return info


def _gate(
    loaded: LoadedConfig,
    out_dir: Path,
    ci: CIContext,
    say: Progress,
    *,
    fetch: Callable[[str, Path], Path] | None = None,
    champion_file: Path | None = None,
    step: Step | None = None,
    early_stop: EarlyStop | None = None,
) -> Report:

    cfg = loaded.config
    rt = cfg.runtime
    set_determinism(rt.seed, rt.threads)

    if cfg.ship.export:
        check_available(cfg.ship.export)

    say("loading the model and the holdout")
    inputs = load_inputs(loaded, out_dir, fetch=fetch)
    champion = None
    if champion_file is not None:
        say("loading the champion")
        # Same safe loader as the teacher; a champion is never unpickled.
        champion = load_model_file(
            champion_file,
            cfg.model.model_copy(
                update={
                    "path": str(champion_file),
                    "url": None,
                    "uri": None,
                    "sha256": None,
                    "allow_pickle": False,
                }
            ),
        )

    student, records = apply_passes(loaded, inputs, cfg.passes, say, step=step)
    pass_history = [r.to_dict() for r in records]

    say("packing the student and reading it back")
    shipped_path = out_dir / cfg.ship.filename
    try:
        shipped, info = ship(loaded, student, pass_history, shipped_path)
        return _evaluate_and_decide(
            loaded,
            ci,
            inputs,
            Shipped(shipped_path, shipped, info, pass_history),
            champion=champion,
            say=say,
            step=step,
            early_stop=early_stop,
        )
    except BaseException:
        # The tool could not decide: leave no un-gated student where a later step
        # (an upload, a promotion) could pick it up as if it had been checked.
        shipped_path.unlink(missing_ok=True)
        raise


def _evaluate_and_decide(
    loaded: LoadedConfig,
    ci: CIContext,
    inputs: Inputs,
    candidate: Shipped,
    *,
    champion: Any,
    say: Progress,
    step: Step | None,
    early_stop: EarlyStop | None,
) -> Report:
    import torch

    cfg = loaded.config
    rt = cfg.runtime
    teacher, holdout = inputs.teacher, inputs.holdout
    shipped_path, shipped, info = candidate.path, candidate.module, candidate.info
    pass_history = candidate.passes

    say(f"evaluating on {holdout.name}")
    models = {"teacher": teacher.module, "student": shipped}
    if champion is not None:
        models["champion"] = champion.module
    # One streaming pass: metrics, the holdout's digest and progress from the same batches.

    digest, total, seen = HoldoutDigest(), holdout.size_hint(), [0]

    def on_batch(x: torch.Tensor, y: torch.Tensor) -> None:
        digest.update(x, y)
        seen[0] += len(y)
        if step is not None:
            step("evaluating", seen[0], total)

    task = score(models, holdout, batch_size=cfg.data.batch_size, on_batch=on_batch)
    if step is not None and total is None:
        step("evaluating", seen[0], seen[0])
    holdout_digest = digest.hexdigest()
    x_lat, y_lat = next(holdout.batches(rt.latency_batch_size))
    x_lat, y_lat = x_lat[: rt.latency_batch_size], y_lat[: rt.latency_batch_size]
    if early_stop is not None:
        known = {
            "teacher.accuracy": task["teacher"].accuracy,
            "student.accuracy": task["student"].accuracy,
            "teacher.file_bytes": float(teacher.file_bytes),
            "student.file_bytes": float(info.file_bytes),
        }
        early_stop({**known, **derive(known)})
    lat = latency_ms(
        models,
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
    c_metrics = None
    if champion is not None:
        c_metrics = measure("champion", champion.module, champion.file_bytes)
        flat |= {f"champion.{k}": v for k, v in c_metrics.items()}
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
    class_delta, notes = class_figures(
        task["teacher"], task["student"], limit=thresholds.get("max_class_drop")
    )
    deltas.update(class_delta)
    result = decide(
        thresholds,
        {**flat, **deltas},
        decision=th.decision,
        confidence=th.confidence,
        inconclusive=th.inconclusive,
        notes=notes,
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
    per_class = per_class_table(task)
    if "max_class_drop" in thresholds and per_class:
        limit = thresholds["max_class_drop"]
        per_class["max_class_drop"] = limit
        per_class["flagged"] = [
            row["label"] for row in per_class["classes"] if row["drop_points"]["student"] > limit
        ]

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
            "sha256": holdout_digest,
            "x_shape": list(x_lat.shape[1:]),
            "x_dtype": str(x_lat.dtype).removeprefix("torch."),
            "y_dtype": str(y_lat.dtype).removeprefix("torch."),
        },
        environment=_environment(ci, rt.threads, rt.seed),
        config=redact_data(to_mapping(cfg)),
        size=size,
        exports=exports,
        statistics=stats.to_dict(),
        champion=(
            ModelSummary(
                "champion", str(champion.path), champion.file_bytes, champion.sha256, c_metrics
            )
            if champion is not None and c_metrics is not None
            else None
        ),
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
            verdict=result.verdict,
        ),
    )


def _redacted_copy(source: Path, out_dir: Path) -> Path:
    """The config file as written, or a redacted copy when it holds a secret."""

    text = source.read_text(encoding="utf-8")
    clean = redact(text)
    if clean == text:
        return source
    copy_dir = out_dir / "config"
    copy_dir.mkdir(parents=True, exist_ok=True)
    target = copy_dir / source.name
    atomic_write(target, clean)
    return target


def _environment(ci: CIContext, threads: int, seed: int) -> dict[str, Any]:
    return {
        **versions(("ci_compress", "torch", "numpy", "python")),
        "platform": platform.platform(),
        "threads": threads,
        "seed": seed,
        "ci": {k: v for k, v in vars(ci).items() if v is not None},
    }
