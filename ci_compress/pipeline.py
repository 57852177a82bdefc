"""The stage: load -> compress -> pack -> reload -> evaluate -> gate -> record -> report.

:func:`run` does the work and returns a :class:`~ci_compress.report.Report`; it never
prints or exits. It only orchestrates; each step lives with its kind and receives what
it needs:

- :mod:`ci_compress.stages`: determinism, the teacher and the data, the passes, and the
  shipped file read back;
- :mod:`ci_compress.evaluation.measure`: the holdout streamed once for every model,
  latency, memory and counts, the paired statistics and per-class figures;
- :func:`ci_compress.gate.decide`: the decision (pure);
- :func:`assemble_report`: the report, built once;
- :mod:`ci_compress.record`: the champion lookup, the MLflow run, the registry, the
  report files, and the alias, last.

The student that is evaluated is the one rebuilt from the shipped packed file, never the
in-memory copy the passes produced. Warnings (an export skipped, MLflow unavailable) go
to their own channel, ``warn``, and into the report.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress import record
from ci_compress.ci.env import CIContext, detect
from ci_compress.config import LoadedConfig, to_mapping
from ci_compress.errors import ConfigError
from ci_compress.evaluation.measure import Candidate, Measurements, Paired, compare, measure
from ci_compress.evaluation.performance import latency_ratio
from ci_compress.evaluation.statistics import PairedStatistics
from ci_compress.evaluation.tasks import Classification, Task
from ci_compress.explain import explain
from ci_compress.files import make_dir, remove_files
from ci_compress.gate import (
    GateResult,
    Tightened,
    decide,
    derive,
    metric_figures,
    metric_rules,
    stricter,
)
from ci_compress.layers.batches import Inputs as ModelInputs
from ci_compress.layers.batches import first_tensor
from ci_compress.layers.outputs import OutputSpec
from ci_compress.loading.models import LoadedModel, load_model_file
from ci_compress.packing.export import SUFFIX as EXPORT_SUFFIX
from ci_compress.packing.export import check_available, export_all
from ci_compress.packing.file import size_breakdown
from ci_compress.packing.runtimes import RUNTIMES, artifact_paths
from ci_compress.progress import Step, Warn, Warnings, step_of, warn_of
from ci_compress.redaction import redact_data
from ci_compress.report import (
    Environment,
    ExportResult,
    HoldoutInfo,
    ModelSummary,
    PassSummary,
    Report,
    Serving,
    SizeBreakdown,
)
from ci_compress.reporting.explain import write_chart
from ci_compress.reporting.render import report_files
from ci_compress.reproducibility import build_manifest
from ci_compress.stages import (
    Inputs,
    Shipped,
    apply_passes,
    load_inputs,
    serve,
    set_determinism,
    ship,
)
from ci_compress.tracking import NullTracker, Tracker, make_tracker, model_fetcher
from ci_compress.versions import versions

if TYPE_CHECKING:
    from ci_compress.evaluation.metrics import TaskMetrics
    from ci_compress.loading.data import Dataset
    from ci_compress.record import Policy

Progress = Callable[[str], None]
EarlyStop = Callable[[Mapping[str, float]], None]
Fetch = Callable[[str, Path], Path]


def _silent(_msg: str) -> None:
    return None


def run(
    loaded: LoadedConfig,
    *,
    tracker: Tracker | None = None,
    environ: Mapping[str, str] | None = None,
    report_dir: Path | None = None,
    progress: Progress | None = None,
    warn: Warn | None = None,
    promote: bool = False,
) -> Report:
    """Run the whole gate for one config and return its report.

    ``progress`` receives progress lines, ``warn`` each warning as it happens (default:
    a ``warning:`` line through ``progress``); the report lists the warnings too. The
    MLflow writes are :mod:`ci_compress.record`'s, in its order: everything recorded,
    the run FINISHED, and only then the alias; any failure before that leaves the alias
    where it was and marks the run FAILED.
    """
    environ = os.environ if environ is None else environ
    cfg = loaded.config
    say = progress or _silent
    warnings = Warnings(warn or warn_of(progress))
    ci = detect(environ, loaded.base_dir)
    record.check_promote(
        promote=promote,
        ci=ci,
        registered_model=cfg.mlflow.registered_model if cfg.mlflow.enabled else None,
        alias=cfg.mlflow.alias,
    )
    out_dir = report_dir or loaded.resolve(cfg.report.dir)
    make_dir(out_dir)
    try:
        return _run(
            loaded,
            out_dir,
            ci,
            tracker=tracker,
            environ=environ,
            say=say,
            warnings=warnings,
            progress=progress,
            promote=promote,
        )
    except BaseException:
        # Exit 2, 3, 4, 70 or a signal (SIGTERM arrives as KeyboardInterrupt): the tool
        # could not decide, so nothing it wrote may be taken for a checked result.
        remove_files(outputs(out_dir, cfg.ship.filename))
        raise


def outputs(out_dir: Path, ship_filename: str) -> list[Path]:
    """Every file a gate writes into its report folder: the shipped student and its
    exports, the report files, the charts and the analysis. A gate that ends in an error
    or a signal removes them all (a completed gate, even a failed one, keeps them)."""
    stem = ship_filename.removesuffix(".ccz")
    return [
        out_dir / ship_filename,
        *(out_dir / f"{stem}{suffix}" for suffix in EXPORT_SUFFIX.values()),
        *(p for runtime in RUNTIMES for p in artifact_paths(runtime, out_dir, stem)),
        *report_files(out_dir, manifest=True).values(),
        *(
            out_dir / name
            for name in ("sensitivity.png", "trend.png", "explain.json", "explain.md")
        ),
    ]


def _run(
    loaded: LoadedConfig,
    out_dir: Path,
    ci: CIContext,
    *,
    tracker: Tracker | None,
    environ: Mapping[str, str],
    say: Progress,
    warnings: Warnings,
    progress: Progress | None,
    promote: bool,
) -> Report:
    """:func:`run` once its report folder exists (``run`` removes what this wrote when
    it raises)."""
    cfg = loaded.config
    registered_model = cfg.mlflow.registered_model if cfg.mlflow.enabled else None
    alias = cfg.mlflow.alias
    tracker = tracker or make_tracker(loaded, environ, warnings)
    if registered_model and isinstance(tracker, NullTracker):
        warnings("MLflow is not available: no registration, no promotion, champion checks skipped")
        registered_model = None
    teacher_source: dict[str, Any] = {}
    fetch = model_fetcher(loaded, environ, tracker, teacher_source)
    with record.gate_run(tracker, cfg.mlflow, ci) as mlflow_run:
        champion = (
            record.look_up_champion(tracker, registered_model, alias, out_dir / "champion", say)
            if registered_model
            else None
        )
        report = _compress_and_evaluate(
            loaded,
            out_dir,
            ci,
            say,
            warnings,
            fetch=fetch,
            champion_file=champion.file if champion else None,
            step=step_of(progress),
            policy=record.pr_policy(champion, ci),
        )
        baseline = record.baseline(champion, report, tracker, warn=warnings)
        trend, trend_png = (
            record.trend(tracker, registered_model, alias, report, out_dir)
            if registered_model
            else (None, None)
        )
        explained = _explain_if_asked(loaded, report.passed, out_dir, say, fetch)
        report = replace(
            report,
            baseline=baseline,
            trend=trend,
            explain=explained[0] if explained else None,
            artifacts=replace(
                report.artifacts,
                sensitivity_png=explained[1] if explained else None,
                trend_png=trend_png,
            ),
            warnings=warnings.items,
            mlflow=record.mlflow_info(mlflow_run, cfg.mlflow.experiment, teacher_source),
        )
        return record.record_gate(
            mlflow_run,
            report,
            loaded=loaded,
            out_dir=out_dir,
            ci=ci,
            registered_model=registered_model,
            alias=alias,
            promote=promote,
            champion=champion.version if champion else None,
            say=say,
        )


def evaluate(
    loaded: LoadedConfig,
    *,
    report_dir: Path,
    environ: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    early_stop: EarlyStop | None = None,
    fetch: Fetch | None = None,
) -> Report:
    """Compress, pack, reload, evaluate and gate one config, without MLflow or report files.

    The student is written to ``report_dir``. ``early_stop`` is called with the task
    and size measurements before latency is measured; it may raise to abandon a
    hopeless candidate (``ci-compress tune`` prunes trials this way). A ``model.uri``
    teacher comes from ``fetch`` (tune passes the file it downloaded once), else it is
    downloaded from the configured MLflow server (nothing is recorded there). Warnings
    reach ``progress`` as ``warning:`` lines.
    """
    environ = os.environ if environ is None else environ
    report_dir.mkdir(parents=True, exist_ok=True)
    ci = detect(environ, loaded.base_dir)
    fetch = fetch or model_fetcher(loaded, environ, NullTracker(), {})
    return _compress_and_evaluate(
        loaded,
        report_dir,
        ci,
        progress or _silent,
        warn_of(progress),
        fetch=fetch,
        early_stop=early_stop,
    )


def _compress_and_evaluate(
    loaded: LoadedConfig,
    out_dir: Path,
    ci: CIContext,
    say: Progress,
    warn: Warn,
    *,
    fetch: Fetch | None = None,
    champion_file: Path | None = None,
    step: Step | None = None,
    early_stop: EarlyStop | None = None,
    policy: Policy | None = None,
) -> Report:
    """Everything up to the decision: load, compress, ship, reload, evaluate, gate.

    ``policy`` (a PR build's, from the registry) holds each threshold to at least its
    strictness; the gate section of the report lists the ones the config tried to loosen.

    A failure after the student was written removes it: the tool could not decide, and
    no un-gated student may stay where a later step (an upload, a promotion) could pick
    it up as if it had been checked.
    """
    cfg = loaded.config
    set_determinism(cfg.runtime.seed, cfg.runtime.threads)
    if cfg.ship.export:
        check_available(cfg.ship.export)

    say("loading the model and the holdout")
    inputs = load_inputs(loaded, out_dir, fetch=fetch)
    if inputs.teacher_variation:
        warn(
            f"the teacher is not deterministic: two forward passes on the same batch of "
            f"{inputs.holdout.field} differ by up to {inputs.teacher_variation:.3g} (a model "
            "that stays in train mode, e.g. dropout, or random operations in its forward); "
            "every figure of this gate varies from run to run"
        )
    champion = None
    if champion_file is not None:
        say("loading the champion")
        champion = _load_champion(loaded, champion_file)
        champion = _serve_champion(loaded, champion, inputs, warn)

    student, records = apply_passes(loaded, inputs, cfg.passes, say, step=step)
    for r in records:
        for note in r.warnings:
            warn(f"passes[{r.index}] ({r.name}): {note}")
    pass_history = [r.to_dict() for r in records]

    say("packing the student and reading it back")
    shipped_path = out_dir / cfg.ship.filename
    runtime_files = artifact_paths(
        cfg.ship.runtime, out_dir, cfg.ship.filename.removesuffix(".ccz")
    )
    try:
        module, info = ship(loaded, student, pass_history, shipped_path, holdout=inputs.holdout)
        served = None
        if cfg.ship.runtime != "torch":
            quantized = "" if cfg.ship.quantize == "none" else f" {cfg.ship.quantize}"
            say(f"converting the student to {cfg.ship.runtime}{quantized}")
            served = serve(loaded, module, inputs, shipped_path)
        return _evaluate(
            loaded,
            ci,
            inputs,
            Shipped(shipped_path, module, info, pass_history, served),
            champion=champion,
            say=say,
            warn=warn,
            step=step,
            early_stop=early_stop,
            policy=policy,
        )
    except BaseException:
        remove_files([shipped_path, *runtime_files])
        raise


def _serve_champion(
    loaded: LoadedConfig, champion: LoadedModel, inputs: Inputs, warn: Warn
) -> LoadedModel:
    """The champion served as the candidate is: its ``.ccz`` converted to ``ship.runtime``
    the same way (and quantized the same way) beside the downloaded file, so both are
    measured in one runtime. A champion the runtime cannot take is measured in torch,
    with a warning."""
    if loaded.config.ship.runtime == "torch":
        return champion
    try:
        served = serve(loaded, champion.module, inputs, champion.path)
    except ConfigError as e:
        warn(
            f"the champion cannot be served by {loaded.config.ship.runtime} ({e}); "
            "it is measured in torch"
        )
        return champion
    assert served is not None
    return replace(champion, module=served.module, file_bytes=served.file_bytes)


def _load_champion(loaded: LoadedConfig, path: Path) -> LoadedModel:
    """The champion's file, through the teacher's safe loader; a champion is never unpickled."""
    return load_model_file(
        path,
        loaded.config.model.model_copy(
            update={
                "path": str(path),
                "url": None,
                "uri": None,
                "sha256": None,
                "allow_pickle": False,
            }
        ),
        base_dir=loaded.base_dir,
    )


def _evaluate(
    loaded: LoadedConfig,
    ci: CIContext,
    inputs: Inputs,
    candidate: Shipped,
    *,
    champion: LoadedModel | None,
    say: Progress,
    warn: Warn,
    step: Step | None,
    early_stop: EarlyStop | None,
    policy: Policy | None = None,
) -> Report:
    """Measure the shipped student beside the teacher (and champion), export, decide."""
    cfg = loaded.config
    rt, th = cfg.runtime, cfg.thresholds
    teacher, holdout = inputs.teacher, inputs.holdout

    say(f"evaluating on {holdout.name}")
    models = {
        "teacher": Candidate(teacher.module, teacher.file_bytes),
        "student": Candidate(candidate.serving, candidate.file_bytes),
    }
    if champion is not None:
        models["champion"] = Candidate(champion.module, champion.file_bytes)
    measured = measure(
        models,
        holdout,
        batch_size=cfg.data.batch_size,
        latency_batch=rt.latency_batch_size,
        repeats=rt.latency_repeats,
        warmup=rt.latency_warmup,
        step=step,
        before_latency=_before_latency(early_stop, models),
        task=inputs.task,
        output=cfg.model.output,
        device=rt.device,
    )
    exports = _export(
        candidate,
        cfg.ship.export,
        holdout,
        cfg.data.batch_size,
        measured.example,
        say,
        warn,
        output=cfg.model.output,
    )
    task = inputs.task or Classification()
    figures = {
        **measured.figures,
        "student": {**measured.figures["student"], **_export_figures(exports, task)},
    }
    flat = {f"{role}.{k}": v for role, values in figures.items() for k, v in values.items()}
    thresholds: Mapping[str, float] = th.active()
    tightened: tuple[Tightened, ...] = ()
    if policy is not None:
        thresholds, tightened = stricter(thresholds, policy.thresholds)
    paired = compare(
        measured.task,
        confidence=th.confidence,
        resamples=th.bootstrap_resamples,
        seed=rt.seed,
        max_class_drop=thresholds.get("max_class_drop"),
        scored=task,
    )
    deltas = {
        **derive(flat),
        **_metric_deltas(measured.task, task, th.metrics),
        **paired.deltas(),
        **latency_deltas(
            measured, th.confidence, warn if "max_latency_ratio" in thresholds else None
        ),
    }
    if "accuracy" in th.metrics and isinstance(paired.statistics, PairedStatistics):
        deltas.update(_accuracy_intervals(paired.statistics))
    _warn_if_too_small(measured.samples, holdout.name, warn)
    result = decide(
        thresholds,
        {**flat, **deltas},
        decision=th.decision,
        confidence=th.confidence,
        inconclusive=th.inconclusive,
        notes=dict(paired.class_notes),
        rules=metric_rules(thresholds),
    )
    if policy is not None:
        result = replace(result, policy_source=policy.source, tightened=tightened)
    if result.verdict == "inconclusive" and th.inconclusive != "pass":
        warn(
            f"the holdout is too small to decide at {th.confidence:.0%} confidence: "
            + "; ".join(c.message for c in result.undecided)
            + f" (thresholds.inconclusive: {th.inconclusive})"
        )
    elif result.verdict == "inconclusive":
        say("the gate is inconclusive; thresholds.inconclusive: pass lets it through")
    return assemble_report(
        loaded,
        ci,
        teacher=teacher,
        student=candidate,
        champion=champion,
        holdout_name=holdout.name,
        measured=measured,
        figures=figures,
        exports=exports,
        deltas=deltas,
        thresholds=thresholds,
        paired=paired,
        result=result,
    )


# Fewer holdout samples than this decide nothing: one sample moves the accuracy by
# more than 3 points, and no interval can be narrower than the limits people set.
MIN_DECIDING_SAMPLES = 30


def _warn_if_too_small(samples: int, name: str, warn: Warn) -> None:
    if samples < MIN_DECIDING_SAMPLES:
        warn(
            f"the holdout {name} has {samples} sample(s): too few to decide anything "
            f"(one sample moves the accuracy by {100 / samples:.3g} points); give at least "
            f"{MIN_DECIDING_SAMPLES}, ideally hundreds (thresholds.decision: confident says "
            "when it is too small to decide)"
        )


def latency_deltas(
    measured: Measurements, confidence: float, warn: Warn | None
) -> dict[str, float]:
    """``delta.latency_ratio`` as the median of the paired per-repeat ratios, with its
    interval (``_ci_low``, ``_ci_high``) at ``confidence``; the ratio of the medians
    otherwise (no per-repeat times). ``warn`` (given when a latency threshold is set)
    hears of too few repeats for an interval at ``confidence``."""
    times = measured.latency_samples
    if "teacher" not in times or "student" not in times:
        return {}
    r = latency_ratio(list(times["teacher"]), list(times["student"]), confidence=confidence)
    if r.repeats == 0:
        return {}
    if not r.exact and warn is not None:
        warn(
            f"runtime.latency_repeats is {r.repeats}: too few for a {confidence:.0%} interval "
            "on the latency ratio (it needs at least 6); the interval shown is the whole "
            "range of the repeats"
        )
    return {
        "delta.latency_ratio": r.ratio,
        "delta.latency_ratio_ci_low": r.low,
        "delta.latency_ratio_ci_high": r.high,
    }


def _export_figures(exports: Mapping[str, ExportResult], task: Task) -> dict[str, float]:
    """Each checked export against the shipped student: top-1 agreement for
    classification (``onnx_agreement``), else the largest output difference
    (``onnx_max_abs_diff``): an argmax of a regression value or an embedding means
    nothing."""
    if task.type == "classification":
        return {f"{fmt}_agreement": float(e.agreement or 0.0) for fmt, e in exports.items() if e.ok}
    return {
        f"{fmt}_max_abs_diff": float(e.max_abs_diff or 0.0) for fmt, e in exports.items() if e.ok
    }


def _metric_deltas(
    scores: Mapping[str, TaskMetrics], task: Task, limited: Collection[str]
) -> dict[str, float]:
    """``delta.<metric>.*`` of the task's metrics (:func:`ci_compress.gate.metric_figures`,
    in each metric's direction): every metric of a task other than classification, and
    for classification only the metrics ``thresholds.metrics`` limits (its historical
    figures keep their names, so a classification report stays as it was)."""
    directions = task.metric_directions()
    if task.type == "classification":
        directions = {k: v for k, v in directions.items() if k in limited}
    return metric_figures(scores["teacher"].metrics, scores["student"].metrics, directions)


def _accuracy_intervals(st: PairedStatistics) -> dict[str, float]:
    """The accuracy drop's interval under the names ``thresholds.metrics.accuracy``'s
    limits read (a fraction, as the metric is), so ``decision: confident`` decides them
    as it does ``max_accuracy_drop``."""
    return {
        "delta.accuracy.drop_ci_low": st.drop_ci_low / 100.0,
        "delta.accuracy.drop_ci_high": st.drop_ci_high / 100.0,
        "delta.accuracy.relative_drop_ci_low": st.relative_ci_low,
        "delta.accuracy.relative_drop_ci_high": st.relative_ci_high,
    }


def _export(
    candidate: Shipped,
    formats: Sequence[str],
    holdout: Dataset,
    batch_size: int,
    example: ModelInputs,
    say: Progress,
    warn: Warn,
    *,
    output: OutputSpec = None,
) -> dict[str, ExportResult]:
    """Each ``ship.export`` format written beside the shipped file and checked against it
    on the holdout; a format the exporter refuses is skipped with a warning."""
    if not formats:
        return {}
    say(f"exporting the student: {', '.join(formats)}")
    written = export_all(
        candidate.module,
        formats,
        candidate.path.parent,
        candidate.path.name.removesuffix(".ccz"),
        example,
        lambda: holdout.batches(batch_size),
        output=output,
    )
    exports = {fmt: ExportResult.from_dict(e) for fmt, e in written.items()}
    for fmt, e in exports.items():
        if not e.ok:
            warn(f"{fmt} export skipped: {e.reason}")
    return exports


def _before_latency(
    early_stop: EarlyStop | None, models: Mapping[str, Candidate]
) -> Callable[[Mapping[str, TaskMetrics]], None] | None:
    """``early_stop`` with the figures known before latency: accuracy and file sizes."""
    if early_stop is None:
        return None
    stop = early_stop

    def check(task: Mapping[str, TaskMetrics]) -> None:
        known = {
            "teacher.accuracy": task["teacher"].accuracy,
            "student.accuracy": task["student"].accuracy,
            "teacher.file_bytes": float(models["teacher"].file_bytes),
            "student.file_bytes": float(models["student"].file_bytes),
        }
        stop({**known, **derive(known)})

    return check


def assemble_report(
    loaded: LoadedConfig,
    ci: CIContext,
    *,
    teacher: LoadedModel,
    student: Shipped,
    champion: LoadedModel | None,
    holdout_name: str,
    measured: Measurements,
    figures: Mapping[str, Mapping[str, float]],
    exports: Mapping[str, ExportResult],
    deltas: Mapping[str, float],
    thresholds: Mapping[str, float],
    paired: Paired,
    result: GateResult,
) -> Report:
    """The report of one evaluated candidate, built once from its sections.

    Sections only a full run knows (the MLflow run, the baseline, explain, warnings,
    the registry, the files written) are added by :func:`run` and
    :func:`ci_compress.record.record_gate` with :func:`dataclasses.replace`.
    """
    cfg = loaded.config
    info = student.info
    v = versions(("ci_compress", "torch", "numpy", "python"))
    x, y = measured.example, measured.example_targets
    flat = {f"{role}.{k}": v for role, values in figures.items() for k, v in values.items()}
    return Report(
        verdict=result.verdict,
        gate=result,
        teacher=ModelSummary(
            "teacher", str(teacher.path), teacher.file_bytes, teacher.sha256, figures["teacher"]
        ),
        student=ModelSummary(
            "student", str(student.path), info.file_bytes, info.sha256, figures["student"]
        ),
        deltas=deltas,
        thresholds=thresholds,
        passes=tuple(PassSummary.from_dict(p) for p in student.passes),
        holdout=HoldoutInfo(
            name=holdout_name,
            samples=measured.samples,
            sha256=measured.holdout_sha256,
            x_shape=tuple(first_tensor(x).shape[1:]),
            x_dtype=str(first_tensor(x).dtype).removeprefix("torch."),
            y_dtype=None if y is None else str(y.dtype).removeprefix("torch."),
        ),
        environment=Environment(
            ci_compress=v["ci_compress"] or "",
            torch=v["torch"] or "",
            numpy=v["numpy"] or "",
            python=v["python"] or "",
            platform=platform.platform(),
            threads=cfg.runtime.threads,
            seed=cfg.runtime.seed,
            ci={
                k: str(v).lower() if isinstance(v, bool) else v
                for k, v in vars(ci).items()
                if v not in (None, False)
            },
        ),
        config=redact_data(to_mapping(cfg)),
        size=SizeBreakdown.from_dict(
            {**size_breakdown(student.module, info), "teacher_file_bytes": teacher.file_bytes}
        ),
        exports=exports,
        statistics=paired.statistics,
        champion=(
            ModelSummary(
                "champion",
                str(champion.path),
                champion.file_bytes,
                champion.sha256,
                figures["champion"],
            )
            if champion is not None
            else None
        ),
        per_class=paired.per_class,
        serving=_serving(student, cfg.runtime.threads),
        reproducibility=build_manifest(
            loaded,
            model_file=str(teacher.path),
            model_sha256=teacher.sha256,
            holdout_name=holdout_name,
            holdout_sha256=measured.holdout_sha256,
            holdout_samples=measured.samples,
            student_sha256=info.sha256,
            pass_history=student.passes,
            measurements={**flat, **deltas},
            per_class=paired.per_class,
            verdict=result.verdict,
        ),
    )


def _serving(student: Shipped, threads: int) -> Serving | None:
    served = student.served
    if served is None:
        return None
    return Serving(
        runtime=served.runtime,
        quantize=served.quantize,
        files=tuple(str(p) for p in served.files),
        file_bytes=served.file_bytes,
        sha256=served.sha256,
        ccz_file=str(student.path),
        ccz_bytes=student.info.file_bytes,
        threads=threads,
    )


def _explain_if_asked(
    loaded: LoadedConfig, passed: bool, out_dir: Path, say: Progress, fetch: Fetch | None
) -> tuple[dict[str, Any], str] | None:
    """The per-layer analysis and its chart, when ``explain.when`` asks for it."""
    when = loaded.config.explain.when
    if not (when == "always" or (when == "fail" and not passed)):
        return None
    say("explaining: per-layer sensitivity")
    result = explain(loaded, report_dir=out_dir, progress=say, fetch=fetch).to_dict()
    return result, str(write_chart(result, out_dir / "sensitivity.png"))
