"""RECORD: the ordered MLflow writes of a gate, of ``explain`` and of ``tune``.

One writer of an MLflow run's lifecycle: :func:`recorded_run` starts (or resumes) a run
and, whatever its body does, ends it FINISHED when the body returns and FAILED when it
raises (best effort, one quick attempt, so a dead server does not double the time to
fail). A gate, an analysis and a study with its trials all go through it.

A gate's writes (:func:`record_gate`) come in this order, so that no failure leaves a
half-done promotion: run params, metrics (and each pass's figures as step metrics), the
holdout as the run's dataset, the student (its exports, the config) as artifacts; the
new model version, waited for until READY and tagged with the verdict and thresholds;
the report files; the run marked FINISHED; and only then, last, the alias moves, when
:func:`promotion_decision` allows it. Any failure before that leaves the alias where it
was, marks the run FAILED and tags the version failed (when the server still answers).

Reads the gate needs from the registry live here too: the champion that holds the
alias, and what its own run recorded (:func:`champion_baseline`).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress.ci.env import CIContext
from ci_compress.config import flatten
from ci_compress.errors import CICompressError, ConfigError, InputError, TrackingError
from ci_compress.evaluation.statistics import PairedScoreStatistics
from ci_compress.files import atomic_write
from ci_compress.progress import Warn
from ci_compress.redaction import redact
from ci_compress.report import (
    CHAMPION_MOVED,
    Baseline,
    ChampionRecord,
    HoldoutInfo,
    MlflowInfo,
    RegistryInfo,
    Report,
    TeacherSource,
)
from ci_compress.reporting.render import report_files, write_reports
from ci_compress.reporting.trend import TREND_VERSIONS, build_trend
from ci_compress.reporting.trend import write_chart as write_trend_chart
from ci_compress.tracking import MlflowTracker, ModelVersionRef, NullTracker, Tracker

if TYPE_CHECKING:
    from ci_compress.config import LoadedConfig, MlflowConfig

Progress = Callable[[str], None]

RUNNING = {"ci_compress.status": "running"}
FAILED = {"ci_compress.status": "failed"}
PASS_METRICS = ("params_before", "params_after", "nonzero_before", "nonzero_after", "seconds")


# ---------------------------------------------------------------- a run's lifecycle


@dataclass
class RecordedRun:
    """An open MLflow run. ``run_id`` is None when the tracker records nothing."""

    tracker: Tracker
    run_id: str | None
    settled: bool = False  # ended (or promoted): a later exception is not this run's failure
    _on_failure: list[Callable[[], None]] = field(default_factory=list)

    def finish(self, tags: Mapping[str, str] | None = None, *, settle: bool = True) -> None:
        """Set ``tags``, then mark the run FINISHED. ``settle=False``: a write still
        follows (the gate's alias), and its failure marks the run FAILED after all."""
        if tags:
            self.tracker.set_tags(tags)
        self.tracker.end_run("FINISHED")
        self.settled = settle

    def fail(self, tags: Mapping[str, str] | None = None) -> None:
        """Mark the run FAILED now (after ``tags``), best effort, and run the failure hooks."""
        self.settled = True
        with self.tracker.cleanup(), contextlib.suppress(CICompressError):
            if tags:
                self.tracker.set_tags(tags)
            self.tracker.end_run("FAILED")
            for hook in self._on_failure:
                hook()

    def on_failure(self, hook: Callable[[], None]) -> None:
        """Also do ``hook`` when the run fails (e.g. tag the version it registered)."""
        self._on_failure.append(hook)


@contextlib.contextmanager
def recorded_run(
    tracker: Tracker,
    experiment: str,
    name: str,
    tags: Mapping[str, str],
    *,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    failed_tags: Mapping[str, str] | None = None,
) -> Iterator[RecordedRun]:
    """A run from start to end: FINISHED when the body returns (unless it already ended
    the run), FAILED with ``failed_tags`` when the body raises before the run settled.

    ``parent_run_id`` nests the run under another (a tune trial under its study);
    ``resume_run_id`` writes to an existing run instead of starting one.
    """
    if resume_run_id is not None:
        tracker.resume_run(resume_run_id)
        run_id = resume_run_id
    else:
        run_id = tracker.start_run(experiment, name, tags, parent_run_id=parent_run_id)
    run = RecordedRun(tracker, None if isinstance(tracker, NullTracker) else run_id)
    try:
        yield run
    except BaseException:
        if not run.settled:
            run.fail(failed_tags)
        raise
    if not run.settled:
        run.finish()


def shown_uri(tracker: Tracker) -> str:
    """The tracking URI as it may be shown (credentials redacted)."""
    return str(getattr(tracker, "shown_uri", tracker.uri))


# ---------------------------------------------------------------- the gate


def check_promote(
    *, promote: bool, ci: CIContext, registered_model: str | None, alias: str
) -> None:
    """Refuse ``--promote`` where it can never apply, before anything runs."""
    if promote and ci.is_pull_request:
        raise ConfigError(
            f"a pull/merge request build ({f'#{ci.pr_number}' if ci.pr_number else ci.event or 'no number'}) never moves the alias {alias!r}",
            path="--promote",
            hint="drop --promote; the alias moves when the change is merged and the gate passes on the default branch",
        )
    if promote and not registered_model:
        raise ConfigError(
            "--promote needs a registry to promote in",
            path="mlflow.registered_model",
            hint="set mlflow.registered_model (and mlflow.enabled: true)",
        )


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


def gate_run(
    tracker: Tracker, mlflow: MlflowConfig, ci: CIContext
) -> contextlib.AbstractContextManager[RecordedRun]:
    """The MLflow run of one gate, named after the commit, tagged with the CI context."""
    return recorded_run(
        tracker,
        mlflow.experiment,
        mlflow.run_name or f"gate-{(ci.commit or 'local')[:8]}",
        {**ci.tags(), **RUNNING},
        failed_tags=FAILED,
    )


@dataclass(frozen=True)
class Champion:
    """The registry baseline of a gate: the version holding the alias (None: no version
    does yet) and its downloaded file."""

    registered_model: str
    alias: str
    version: ModelVersionRef | None
    file: Path | None


def look_up_champion(
    tracker: Tracker, registered_model: str, alias: str, dest: Path, say: Progress
) -> Champion:
    """The version holding ``alias`` and its file, downloaded into ``dest``."""
    say(f"looking up {registered_model}@{alias}")
    version = tracker.champion(registered_model, alias)
    file = None
    if version is not None:
        file = tracker.fetch(f"models:/{registered_model}/{version.version}", dest).path
    return Champion(registered_model, alias, version, file)


@dataclass(frozen=True)
class Policy:
    """The thresholds a PR build is held to, from outside the PR: those the champion's
    own gate recorded (tag ``ci_compress.thresholds``) when the default branch promoted it."""

    thresholds: Mapping[str, float]
    source: str


POLICY_TAG = "ci_compress.thresholds"


def pr_policy(champion: Champion | None, ci: CIContext) -> Policy | None:
    """The policy of a PR build (None: not a PR build, or no champion to read it from).

    A PR's ``compress.yaml`` is the PR's own code: it may tighten its gate, never loosen
    it below what the default branch last promoted under. The thresholds are read from
    the version holding the alias, where the gate that promoted it recorded them; a
    champion without that tag (moved by hand) carries no policy. A tag that does not
    parse is an error (exit 3): the gate will not guess a policy.
    """
    if champion is None or champion.version is None or not ci.is_pull_request:
        return None
    v = champion.version
    raw = v.tags.get(POLICY_TAG)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        thresholds = {str(k): float(x) for k, x in data.items()}
    except (ValueError, TypeError, AttributeError):
        raise InputError(
            f"the policy recorded on {v.name} version {v.version} (tag {POLICY_TAG}) is not "
            f"a JSON mapping of threshold names to numbers: {raw[:200]!r}",
            hint="fix the tag in the MLflow UI, or promote a new version from the default branch",
        ) from None
    how = v.tags.get("ci_compress.promotion", "by hand")
    return Policy(
        thresholds,
        f"{v.name}@{champion.alias} (version {v.version}, promoted by {how})",
    )


def baseline(
    champion: Champion | None, report: Report, tracker: Tracker, *, warn: Warn
) -> Baseline:
    """The report's baseline section: ``off`` without a registry, ``none`` when no version
    holds the alias (champion checks skipped), else the champion re-measured in ``report``
    beside what its own run recorded."""
    if champion is None:
        return Baseline("off")
    if champion.version is None:
        return Baseline(
            "none",
            registered_model=champion.registered_model,
            alias=champion.alias,
            note=f"no version of {champion.registered_model} holds @{champion.alias} yet: "
            "champion checks skipped (not failed)",
        )
    if report.champion is None:
        return Baseline("none", registered_model=champion.registered_model, alias=champion.alias)
    st = report.statistics
    metric = st.metric if isinstance(st, PairedScoreStatistics) else "accuracy"
    return champion_baseline(
        champion.version,
        champion.alias,
        tracker,
        holdout_sha256=report.holdout.sha256,
        measured_accuracy=report.champion.metrics.get(metric, float("nan")),
        warn=warn,
        metric=metric,
    )


def champion_baseline(
    champion: ModelVersionRef,
    alias: str,
    tracker: Tracker,
    *,
    holdout_sha256: str,
    measured_accuracy: float,
    warn: Warn,
    metric: str = "accuracy",
) -> Baseline:
    """The champion re-measured now, beside what its own gate run recorded.

    ``metric`` is the one compared with the champion's record: ``accuracy`` for
    classification, else the task's primary metric (``measured_accuracy`` is its value).
    """
    recorded = tracker.run_record(champion.run_id) if champion.run_id else {}
    metrics = recorded.get("metrics", {})
    tags = recorded.get("tags", {})
    rec_holdout = tags.get("ci_compress.holdout_sha256")
    rec_acc = metrics.get(f"student.{metric}")
    note = None
    if rec_holdout and rec_holdout != holdout_sha256:
        note = (
            f"version {champion.version} was gated on another holdout "
            f"(sha256 {rec_holdout[:12]}); both are compared on this one"
        )
    elif rec_acc is not None and abs(rec_acc - measured_accuracy) > 1e-9:
        was, now = (
            (f"{rec_acc:.4%}", f"{measured_accuracy:.4%}")
            if metric == "accuracy"
            else (f"{rec_acc:.6g}", f"{measured_accuracy:.6g}")
        )
        warn(
            f"champion version {champion.version} recorded {metric} {was} "
            f"but measures {now} on the same holdout now "
            "(library versions changed?); the gate uses the new measurement"
        )
    return Baseline(
        "compared",
        registered_model=champion.name,
        alias=alias,
        version=champion.version,
        run_id=champion.run_id,
        source=champion.source,
        recorded=ChampionRecord(
            accuracy=rec_acc if metric == "accuracy" else None,
            file_bytes=metrics.get("student.file_bytes"),
            holdout_sha256=rec_holdout,
        ),
        note=note,
    )


def trend(
    tracker: Tracker, registered_model: str, alias: str, report: Report, out_dir: Path
) -> tuple[Mapping[str, Any], str]:
    """The report's ``trend`` section and its chart: this candidate beside the last
    promoted versions of ``registered_model``. A registry read only, made before this run
    registers its own version."""
    history = tracker.promoted_history(registered_model, alias, TREND_VERSIONS)
    built = build_trend(history, report, registered_model=registered_model, alias=alias)
    return built, str(write_trend_chart(built, out_dir / "trend.png"))


def mlflow_info(run: RecordedRun, experiment: str, teacher_source: Mapping[str, Any]) -> MlflowInfo:
    """The report's MLflow section: the run (if one is recorded), where, and where a
    ``model.uri`` teacher came from."""
    return MlflowInfo(
        run_id=run.run_id,
        tracking_uri=shown_uri(run.tracker),
        experiment=experiment,
        run_url=run.tracker.run_url(),
        teacher_source=TeacherSource.from_dict(teacher_source) if teacher_source else None,
    )


def record_gate(
    run: RecordedRun,
    report: Report,
    *,
    loaded: LoadedConfig,
    out_dir: Path,
    ci: CIContext,
    registered_model: str | None,
    alias: str,
    promote: bool,
    champion: ModelVersionRef | None,
    say: Progress,
) -> Report:
    """Record the gate in MLflow, write the report files, and promote last.

    ``registered_model`` is None when nothing is registered (no registry configured, or
    MLflow unavailable). Returns the report as written: with the registry section and
    the names of the files.
    """
    tracker = run.tracker
    eligible, reason = promotion_decision(
        passed=report.passed,
        ci=ci,
        promote=promote,
        registered=registered_model is not None,
        verdict=report.verdict,
    )
    say("recording in MLflow")
    tracker.log_params(flatten(report.config))  # report.config is redacted
    tracker.log_metrics(report.metrics())
    for rec in report.passes:
        tracker.log_metrics(
            {f"pass.{k}": float(getattr(rec, k)) for k in PASS_METRICS}, step=rec.index
        )
    tracker.log_dataset(dataset_info(loaded, report.holdout))
    tracker.set_tags({"ci_compress.holdout_sha256": report.holdout.sha256})
    tracker.log_artifact(Path(report.student.file), "student")
    for export in report.exports.values():
        if export.ok and export.file:
            tracker.log_artifact(Path(export.file), "student")
    if report.serving is not None:
        # what the runtime loads, beside the .ccz (the registry's model file stays the .ccz)
        for file in report.serving.files:
            tracker.log_artifact(Path(file), "student")
    if loaded.source is not None:
        tracker.log_artifact(redacted_copy(loaded.source, out_dir), "config")
    version: ModelVersionRef | None = None
    if registered_model is not None:
        say(f"registering the student as a new version of {registered_model}")
        version = tracker.register(
            registered_model, "student", version_tags(report, ci, reason, eligible, champion)
        )
        name, number = registered_model, version.version
        run.on_failure(lambda: tracker.set_version_tags(name, number, FAILED))
        report = replace(
            report,
            registry=RegistryInfo(
                registered_model=registered_model,
                version=version.version,
                source=version.source,
                alias=alias,
                promotion=reason,
                promoted=False,
                will_promote=eligible,
                compared_with=champion.version if champion else "none",
            ),
        )
        tracker.set_tags({"ci_compress.registered_version": version.version})

    files = report_files(out_dir, manifest=bool(report.reproducibility))
    report = replace(
        report,
        artifacts=replace(report.artifacts, **{k: str(v) for k, v in files.items()}),
    )
    write_reports(report, out_dir)
    for path in files.values():
        tracker.log_artifact(path)
    for chart in (report.artifacts.sensitivity_png, report.artifacts.trend_png):
        if chart:
            tracker.log_artifact(Path(chart))
    promote_now = eligible and version is not None and report.registry is not None
    run.finish(
        {"ci_compress.status": "done", "ci_compress.verdict": report.verdict},
        settle=not promote_now,
    )
    if promote_now and version is not None and report.registry is not None:
        registry = compare_and_swap_alias(
            tracker,
            report.registry,
            holder=run.run_id or f"local-{uuid.uuid4().hex}",
            expected=champion.version if champion else None,
            ttl=loaded.config.mlflow.promotion_lock_ttl,
            wait=loaded.config.mlflow.promotion_lock_wait,
            say=say,
        )
        run.settled = True  # only the local report rewrite can fail from here on
        report = replace(report, registry=registry)
        write_reports(report, out_dir)  # the local copy says what happened
    return report


# ---------------------------------------------------------------- promotion: compare and swap

LOCK_SUFFIX = ".ci-compress-lock"
LOCK_HOLDER = "ci_compress.lock.holder"
LOCK_EXPIRES = "ci_compress.lock.expires"  # epoch seconds, the end of the lease
LOCK_MODEL = "ci_compress.lock.model"
LOCK_POLL_SECONDS = 0.5


def lock_name(registered_model: str) -> str:
    """The registered model that serves as ``registered_model``'s promotion lock."""
    return f"{registered_model}{LOCK_SUFFIX}"


@contextlib.contextmanager
def promotion_lock(
    tracker: Tracker,
    registered_model: str,
    holder: str,
    *,
    ttl: float,
    wait: float,
    say: Progress,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold ``registered_model``'s promotion lock for the body; release it after, always.

    MLflow has no compare-and-swap on an alias, but its registry refuses a second
    registered model of the same name, atomically (a unique key in the server's
    database): creating ``<name>.ci-compress-lock`` is the mutex. Its tags are the
    lease: who holds it (the gate's run id) and until when (``ttl`` seconds). A lock
    whose lease ran out was left by a crashed or killed job: it is deleted (if it is
    still the same lease when read again) and taken anew. A lock held by a live gate is
    waited for, polling, up to ``wait`` seconds; then TrackingError (exit 4): nothing
    was promoted, re-run the job.

    The lease is only as safe as ``ttl`` is long: a holder paused for longer than its
    lease (its critical section is two or three requests) could overlap the gate that
    broke its lock. :func:`compare_and_swap_alias` re-reads its own lease before it moves the alias.
    """
    name = lock_name(registered_model)
    deadline = clock() + wait
    while True:
        now = clock()
        lease = {
            LOCK_HOLDER: holder,
            LOCK_EXPIRES: f"{now + ttl:.3f}",
            LOCK_MODEL: registered_model,
        }
        if tracker.create_lock(name, lease):
            break
        held = tracker.read_lock(name)
        if held is None:
            if now >= deadline:
                raise TrackingError(
                    f"MLflow at {shown_uri(tracker)} refuses to create the promotion lock {name} "
                    "but shows no such model; the alias was not moved",
                    hint="check that no registered model's name differs from it only in case",
                )
            continue  # released between the two requests: try again at once
        if held.get(LOCK_HOLDER) == holder:
            break  # our own create, answered "exists" after a retried request
        if _expires(held) < now:
            say(
                f"breaking a stale promotion lock {name} "
                f"(held by {held.get(LOCK_HOLDER, 'unknown')}, lease ended {now - _expires(held):.0f} s ago)"
            )
            if tracker.read_lock(name) == held:
                tracker.delete_lock(name)
            continue
        if now >= deadline:
            raise TrackingError(
                f"the promotion lock {name} is held by {held.get(LOCK_HOLDER, 'unknown')} "
                f"(lease until {_expires(held):.0f}); waited {wait:g} s, the alias was not moved",
                hint="another gate is promoting a version of this model; re-run the job "
                "(mlflow.promotion_lock_wait sets how long to wait)",
            )
        sleep(LOCK_POLL_SECONDS + random.uniform(0, LOCK_POLL_SECONDS))

    def release() -> None:
        # Only our own lease (one a stale-lock breaker replaced is not ours).
        current = tracker.read_lock(name)
        if current is not None and current.get(LOCK_HOLDER) == holder:
            tracker.delete_lock(name)

    try:
        yield
    except BaseException:
        with tracker.cleanup(), contextlib.suppress(CICompressError):
            release()  # best effort: one quick attempt, the first error is the one to show
        raise
    try:
        release()
    except CICompressError as e:
        say(
            f"warning: could not release the promotion lock {name} ({e.message}); "
            f"the next gate breaks it once its lease ends ({ttl:g} s)"
        )


def _expires(lease: Mapping[str, str]) -> float:
    """The end of a lease; a lock without a readable one counts as expired."""
    try:
        return float(lease.get(LOCK_EXPIRES, ""))
    except ValueError:
        return 0.0


def compare_and_swap_alias(
    tracker: Tracker,
    registry: RegistryInfo,
    *,
    holder: str,
    expected: str | None,
    ttl: float,
    wait: float,
    say: Progress,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> RegistryInfo:
    """Move the alias to ``registry.version`` only if it still points at ``expected``,
    the version this gate compared itself with (None: no version held it): compare and
    swap, under :func:`promotion_lock`.

    If another gate moved the alias since this one looked it up, this candidate was
    never compared with the new champion: the alias stays, the version is tagged
    ``ci_compress.promotion=champion-moved`` and ``candidate=true`` and the report says
    so (exit 7: re-run the job to compare with the new champion). Either way the version
    is tagged with ``ci_compress.alias_was``, the version that held the alias then.
    """
    name, alias, number = registry.registered_model, registry.alias, registry.version
    say(f"taking the promotion lock of {name}")
    with promotion_lock(
        tracker, name, holder, ttl=ttl, wait=wait, say=say, clock=clock, sleep=sleep
    ):
        now = tracker.get_alias(name, alias)
        was = now or "none"
        if now != expected:
            say(
                f"not moving @{alias}: it moved to {f'version {now}' if now else 'no version'} "
                f"after this gate compared version {number} with version {expected or 'none'}"
            )
            tracker.set_version_tags(
                name,
                number,
                {
                    "ci_compress.promotion": CHAMPION_MOVED,
                    "ci_compress.alias_was": was,
                    "candidate": "true",
                },
            )
            tracker.set_tags({"ci_compress.promotion": CHAMPION_MOVED})
            return replace(registry, promotion=CHAMPION_MOVED, will_promote=False, alias_was=was)
        tracker.set_version_tags(name, number, {"ci_compress.alias_was": was})
        # Fencing: still our lease, right before the one write that must not overlap.
        lease = tracker.read_lock(lock_name(name)) or {}
        if lease.get(LOCK_HOLDER) != holder:
            raise TrackingError(
                f"the promotion lock of {name} was broken while this gate held it; the alias was not moved",
                hint="raise mlflow.promotion_lock_ttl above the time the registry takes to answer; re-run the job",
            )
        # Last write: everything the alias will point at is recorded and READY.
        say(f"moving @{alias} of {name} to version {number} (from {was})")
        tracker.set_alias(name, alias, number)
    return replace(registry, promoted=True, alias_was=was)


def version_tags(
    report: Report,
    ci: CIContext,
    reason: str,
    eligible: bool,
    champion: ModelVersionRef | None,
) -> dict[str, str]:
    """The tags of a registered version: verdict, thresholds, promotion, digests, CI."""
    tags = {
        "ci_compress.verdict": report.verdict,
        "ci_compress.thresholds": json.dumps(dict(report.thresholds), sort_keys=True),
        "ci_compress.promotion": reason,
        "ci_compress.student_sha256": report.student.sha256,
        "ci_compress.holdout_sha256": report.holdout.sha256,
        "ci_compress.baseline_version": champion.version if champion else "none",
        **{f"ci_compress.threshold.{k}": repr(v) for k, v in report.thresholds.items()},
        **ci.tags(),
    }
    if report.passed and not eligible:
        tags["candidate"] = "true"
    return tags


def dataset_info(loaded: LoadedConfig, holdout: HoldoutInfo) -> dict[str, Any]:
    """The holdout as the run's dataset input: name, digest, source, schema, rows."""
    src = loaded.config.data.holdout
    info: dict[str, Any] = {
        "name": holdout.name,
        "sha256": holdout.sha256,
        "samples": holdout.samples,
    }
    if src.builtin:
        info.update(source_type="code", source={"builtin": src.builtin, "split": src.split})
    elif src.path:
        info.update(source_type="local", source={"uri": str(loaded.resolve(src.path))})
    else:
        info.update(source_type="code", source={"factory": src.factory})
    if holdout.x_shape is not None:
        info["schema_shapes"] = {
            "x_shape": list(holdout.x_shape),
            "x_dtype": holdout.x_dtype,
            "y_dtype": holdout.y_dtype,
        }
    return info


def redacted_copy(source: Path, out_dir: Path) -> Path:
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


# ---------------------------------------------------------------- explain


def record_explain(
    tracker: Tracker,
    *,
    experiment: str,
    ci: CIContext,
    result: Mapping[str, Any],
    paths: Mapping[str, Path],
) -> str | None:
    """Record a standalone analysis as its own run (tag ``ci_compress.kind=explain``).

    ``result`` is ``ExplainResult.to_dict()``. Metrics are ``explain.drop_points.<layer>``
    per layer; the outputs are artifacts. Returns the run id, or None when the tracker
    records nothing.
    """
    if isinstance(tracker, NullTracker):
        return None
    with recorded_run(
        tracker,
        experiment,
        f"explain-{(ci.commit or 'local')[:8]}",
        {**ci.tags(), "ci_compress.kind": "explain"},
    ) as run:
        suggested = result.get("suggested_exclude")
        metrics = {f"explain.drop_points.{s['layer']}": s["drop_points"] for s in result["layers"]}
        metrics["explain.full.drop_points"] = result["full"]["drop_points"]
        if suggested is not None:
            metrics["explain.suggested_exclude_count"] = float(len(suggested))
        tracker.log_metrics(metrics)
        tracker.set_tags({"ci_compress.suggested_exclude": ",".join(suggested or []) or "-"})
        for path in paths.values():
            tracker.log_artifact(path)
    return run.run_id


# ---------------------------------------------------------------- tune


def tune_run(
    tracker: Tracker,
    *,
    experiment: str,
    study: str,
    ci: CIContext,
    resume_run_id: str | None = None,
) -> contextlib.AbstractContextManager[RecordedRun]:
    """The parent run of a study (every process on the study's storage resumes the one
    the first process started, so all trials nest under it)."""
    return recorded_run(
        tracker,
        experiment,
        f"tune-{study}",
        {**ci.tags(), "ci_compress.kind": "tune", "ci_compress.study": study},
        resume_run_id=resume_run_id,
    )


def record_tune(
    run: RecordedRun,
    *,
    counts: Mapping[str, int],
    trials: int,
    best_trial: int | None,
    best_metrics: Mapping[str, float],
    passed: bool,
    files: Sequence[Path | None],
) -> None:
    """A study's outcome on its parent run: trial counts, the best trial's figures, the
    tune report, plot and tuned config; then the run is FINISHED."""
    tracker = run.tracker
    metrics = {f"tune.trials.{k}": float(v) for k, v in counts.items()}
    metrics["tune.trials"] = float(trials)
    if best_trial is not None:
        metrics.update({f"best.{k}": v for k, v in best_metrics.items()})
        metrics["best.trial"] = float(best_trial)
    tracker.log_metrics(metrics)
    for path in files:
        if path is not None:
            tracker.log_artifact(path, "tune")
    run.finish(
        {
            "ci_compress.verdict": "pass" if passed else "fail",
            "ci_compress.best_trial": str(best_trial) if best_trial is not None else "none",
        }
    )


@contextlib.contextmanager
def trial_run(
    tracking_uri: str | None,
    parent_run_id: str | None,
    *,
    artifact_root: Path,
    experiment: str,
    study: str,
    number: int,
    worker: str,
    passes: str,
) -> Iterator[RecordedRun | None]:
    """The nested run of one trial (None when the study records nothing)."""
    if parent_run_id is None or tracking_uri is None:
        yield None
        return
    tracker = MlflowTracker(tracking_uri, artifact_root=artifact_root)
    with recorded_run(
        tracker,
        experiment,
        f"{study}-trial-{number}",
        {
            "ci_compress.kind": "tune-trial",
            "ci_compress.study": study,
            "ci_compress.trial": str(number),
            "ci_compress.worker": worker,
            "ci_compress.passes": passes or "none",
        },
        parent_run_id=parent_run_id,
    ) as run:
        yield run


def record_trial(run: RecordedRun, report: Report, report_json: Path, objective: float) -> None:
    """A measured trial: its config, figures and objective, its report.json; FINISHED."""
    run.tracker.log_params(flatten(report.config))
    run.tracker.log_metrics({**report.metrics(), "tune.objective": objective})
    run.tracker.log_artifact(report_json)
    run.finish({"ci_compress.verdict": report.verdict})


def record_pruned_trial(
    run: RecordedRun, config: Mapping[str, Any], figures: Mapping[str, float]
) -> None:
    """A trial abandoned before latency: its config and the figures known by then."""
    run.tracker.log_params(flatten(config))
    run.tracker.log_metrics(figures)
    run.finish({"ci_compress.verdict": "pruned"})


def fail_trial(run: RecordedRun) -> None:
    """A trial whose config the passes refused: FAILED, verdict ``error``."""
    run.fail({"ci_compress.verdict": "error"})
