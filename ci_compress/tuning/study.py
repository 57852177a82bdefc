"""Run the search: Optuna trials on shared storage, in one or many processes and CI jobs.

Every trial builds a full config from the space, validates it like ``ci-compress run``
would, and runs the real gate on it (:func:`ci_compress.pipeline.evaluate`: pack,
reload, evaluate the shipped file). A trial is *feasible* only when the gate passes:
the gate's thresholds become Optuna constraints (read by the TPE
sampler, through ``Trial.set_constraint``), and a trial that already fails a size or accuracy threshold is pruned
before its latency is measured.

Budget and determinism:

- ``max_trials`` counts every trial of the study, whoever ran it: several local
  processes (``jobs``), several CI jobs on one database (``storage``, ``study_name``),
  or a run resumed after an interruption all share one count.
- Trial *n* is sampled by a TPE sampler seeded with ``seed + n`` (plus a per-worker
  offset), from the trials before it. One process therefore asks the same questions
  whether it ran uninterrupted or was stopped and resumed; with a size objective every
  measured value is deterministic too. Parallel workers see each other's trials as
  they finish, so their order, and hence the sequence, depends on timing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_compress import pipeline, record
from ci_compress.ci.env import detect
from ci_compress.config import LoadedConfig, to_mapping
from ci_compress.config.tune import TuneConfig
from ci_compress.errors import CICompressError, ConfigError, InfraError
from ci_compress.gate import RULES, decide, metric_rules
from ci_compress.redaction import redact
from ci_compress.reporting.render import write_report_json
from ci_compress.tracking import fetch_teacher
from ci_compress.tuning.quality import quality_of
from ci_compress.tuning.space import resolve

if TYPE_CHECKING:
    import optuna

    from ci_compress.config import LoadedConfig, to_mapping
    from ci_compress.config.tune import TuneConfig
    from ci_compress.tuning.space import Space

Progress = Callable[[str], None]
WORKER_OFFSET = 7919  # seed offset between local workers, so they do not sample alike
EARLY_THRESHOLDS = (
    "max_accuracy_drop",
    "max_relative_accuracy_drop",
    "min_compression_ratio",
    "max_size_bytes",
)


class StorageError(InfraError):
    """The Optuna storage (sqlite file or database server) cannot be used."""


class _OverBudget(Exception):
    """A worker created a trial after the study reached max_trials (a race)."""


class _Hopeless(Exception):
    """The student already fails a threshold latency cannot change."""


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs; picklable so ``jobs > 1`` can spawn processes."""

    loaded: LoadedConfig
    tune: TuneConfig
    storage_url: str
    study_name: str
    max_trials: int
    seed: int
    deadline: float | None  # time.time() after which no new trial starts
    out_dir: Path
    worker: int = 0
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    # A model.uri teacher, downloaded once before any trial: every trial of this process
    # (and its --jobs children) compresses the same file, even if the alias moves.
    teacher_file: Path | None = None


def storage_url(loaded: LoadedConfig, tune: TuneConfig, override: str | None) -> str:
    url = override or tune.storage
    if url:
        return url
    return f"sqlite:///{(loaded.base_dir / 'ci-compress-tune.db').resolve()}"


def study_name_for(loaded: LoadedConfig, tune: TuneConfig, override: str | None) -> str:
    """--study, else tune.study_name, else the config file's stem."""
    return override or tune.study_name or (loaded.source.stem if loaded.source else "ci-compress")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage with heartbeats, so a killed worker's trial is failed."""
    import optuna

    _quiet_optuna()
    kwargs: dict[str, Any] = {}
    sqlite = url.startswith("sqlite:")
    if sqlite:
        # Several processes share the file; wait for the write lock instead of failing.
        # isolation_level=None stops Python's sqlite3 from opening transactions itself
        # (it would do so only at the first write); _serialize opens every one instead.
        kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}}
    races = ("already exists", "UNIQUE constraint", "duplicate key")
    for attempt in range(5):
        try:
            with _init_lock(url):
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=10, grace_period=60
                )
                if sqlite:
                    _serialize(storage)
                return storage
        except Exception as e:
            # Workers creating the tables of a new database at once (several CI jobs on
            # one server): the loser sees the tables or version row already there, so
            # it tries again and finds a ready database.
            if any(r in str(e) for r in races) and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            error = e
            break
    try:
        raise error
    except Exception as e:
        raise StorageError(
            f"cannot open the tuning storage {redact(url)}: {redact(str(e)).splitlines()[0][:300]}",
            hint="check tune.storage / --storage (sqlite:///file.db or postgresql://user@host/db) and that its driver is installed",
        ) from None


def _serialize(storage: optuna.storages.RDBStorage) -> None:
    """Make every transaction on a sqlite storage take the write lock when it begins.

    Optuna hands a waiting trial (the enqueued base config) to a worker by reading
    its state and then writing RUNNING, in one transaction. By default sqlite3 only
    locks at the write, so two processes both read WAITING, both run the trial and
    the second to finish fails with "Cannot tell a COMPLETE trial" (measured: the
    same trial went to both of two workers started together in 29 of 30 tries).
    ``BEGIN IMMEDIATE`` makes the read and the write one step. Server databases lock
    the row (``SELECT ... FOR UPDATE``) and need none of this.
    """
    from sqlalchemy import event

    def begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(storage.engine, "begin", begin)


@contextlib.contextmanager
def _init_lock(url: str) -> Iterator[None]:
    """For a sqlite file, one process at a time creates or upgrades its tables."""
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(url.removeprefix("sqlite:///") + ".lock")
    try:
        f = lock.open("a")
    except OSError:
        yield  # read-only folder: nothing we can lock, the retry loop still helps
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def constraints_of(thresholds: Mapping[str, float], figures: Mapping[str, float]) -> list[float]:
    """One value per threshold, <= 0 exactly when the gate's check passes (scaled by
    the limit so that bytes and points weigh alike in the sampler)."""

    out = []
    rules = {**RULES, **metric_rules(thresholds)}
    for name in sorted(thresholds):
        metric, direction, _ = rules[name]
        limit = float(thresholds[name])
        if metric not in figures:
            out.append(0.0)  # not measured (pruned before latency): no evidence either way
            continue
        measured = float(figures[metric])
        gap = measured - limit if direction == "max" else limit - measured
        out.append(gap / (abs(limit) or 1.0))
    return out


def objective_value(space: Space, figures: Mapping[str, float]) -> float:
    if space.objective == "size":
        return float(figures["student.file_bytes"])
    if space.objective == "latency":
        return float(figures["student.latency_ms"])
    w = space.weights
    return w["size"] * figures["student.file_bytes"] / figures["teacher.file_bytes"] + w[
        "latency"
    ] * figures["student.latency_ms"] / max(figures["teacher.latency_ms"], 1e-12)


def _sampler(settings: Settings, n: int) -> optuna.samplers.BaseSampler:
    import optuna

    # Feasibility reaches TPE through Trial.set_constraint (see _Objective._record);
    # constraints_func is deprecated since Optuna 5.0.
    return optuna.samplers.TPESampler(
        seed=settings.seed + n + WORKER_OFFSET * settings.worker,
        n_startup_trials=settings.tune.startup_trials,
    )


def worker_tag(worker: int) -> str:
    """host:pid:w<local worker>, plus the CI job URL when there is one."""

    ci = detect(os.environ, Path.cwd())
    tag = f"{socket.gethostname()}:{os.getpid()}:w{worker}"
    return f"{tag} {ci.job_url}" if ci.job_url else tag


def run_worker(settings: Settings, space: Space, progress: Progress | None = None) -> int:
    """Run trials until the study holds max_trials trials or the deadline passes.

    Returns how many trials this worker evaluated.
    """
    import optuna

    say = progress or (lambda _m: None)
    storage = open_storage(settings.storage_url)
    tag = worker_tag(settings.worker)
    ran = 0
    while settings.deadline is None or time.time() < settings.deadline:
        try:
            trials = storage.get_all_trials(_study_id(storage, settings.study_name), deepcopy=False)
        except Exception as e:
            raise StorageError(f"cannot read the study: {e}") from None
        if _spent(trials, free=settings.max_trials) >= settings.max_trials:
            break
        # seeded by every trial started, skipped ones too: a skipped combination does
        # not count against the budget, but the next trial must not sample it again
        study = optuna.load_study(
            study_name=settings.study_name,
            storage=storage,
            sampler=_sampler(settings, _spent(trials)),
        )
        objective = _Objective(settings, space, tag, say)
        study.optimize(objective, n_trials=1, catch=(_OverBudget, ConfigError))
        if objective.over_budget:
            break
        ran += 1
    return ran


def _spent(
    trials: Sequence[optuna.trial.FrozenTrial], before: int | None = None, free: int = 0
) -> int:
    """Trials that count against max_trials.

    Without ``before``: the trials started so far. A waiting trial (the base config,
    enqueued before the first trial) is not spent yet: it is the next one a worker
    runs, so counting it would end a ``max_trials: 1`` study before its only trial.

    With ``before`` (a trial deciding whether it may run): every trial numbered below
    it, waiting ones included, since each of them runs before or beside this one.

    A trial a worker created after the budget was spent is marked ``over_budget`` and
    does not count: otherwise a race between workers would eat a later run's budget.

    With ``free``: trials skipped as an invalid combination (never run, marked
    ``invalid``) do not count either, up to ``free`` of them (so a sampler that keeps
    proposing invalid combinations still ends the study).
    """
    import optuna

    waiting = optuna.trial.TrialState.WAITING
    counted = [
        t
        for t in trials
        if not t.user_attrs.get("over_budget")
        and (t.number < before if before is not None else t.state != waiting)
    ]
    invalid = sum(1 for t in counted if t.user_attrs.get("invalid")) if free else 0
    return len(counted) - invalid + max(0, invalid - free)


def _pinned(path: Path) -> Callable[[str, Path], Path]:
    """A teacher fetcher that returns the file the study downloaded before its trials."""
    return lambda _uri, _dest: path


def _study_id(storage: optuna.storages.BaseStorage, name: str) -> int:
    return storage.get_study_id_from_name(name)


class _Objective:
    """One trial: sample, validate, run the gate, record, return the objective."""

    def __init__(self, settings: Settings, space: Space, tag: str, say: Progress) -> None:
        self.settings, self.space, self.tag, self.say = settings, space, tag, say
        self.quality = quality_of(settings.loaded)
        self.over_budget = False

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        s = self.settings
        done = trial.study.get_trials(deepcopy=False)
        if _spent(done, before=trial.number, free=s.max_trials) >= s.max_trials:
            self.over_budget = True
            trial.set_user_attr("over_budget", True)
            raise _OverBudget(f"trial {trial.number} is beyond max_trials {s.max_trials}")
        trial.set_user_attr("worker", self.tag)
        passes, ship = self.space.sample(trial)
        trial.set_user_attr("passes", passes)
        trial.set_user_attr("ship", ship)
        summary = describe_config(passes, ship)
        self.say(f"trial {trial.number}: {summary}")
        seen = _already_measured(trial, passes, ship)
        if seen is not None:
            # Same config as an earlier trial: reuse its measurements, do not re-run.
            trial.set_user_attr("duplicate_of", seen.number)
            for key in ("metrics", "passed", "pruned", "constraints", "value"):
                if key in seen.user_attrs:
                    trial.set_user_attr(key, seen.user_attrs[key])
            names = sorted(self.settings.loaded.config.thresholds.active())
            for name, value in zip(names, seen.user_attrs.get("constraints", []), strict=False):
                trial.set_constraint(name, value)
            self.say(
                f"trial {trial.number}: same config as trial {seen.number}, reusing its result"
            )
            if seen.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned()
            return float(seen.user_attrs["value"])
        try:
            config = self.space.validate(passes, ship)
        except ConfigError as e:
            # Options valid one by one but not together (ship.quantize int8 with
            # ship.runtime torch, a torch int8 pass served by onnxruntime): the run
            # would refuse this config before loading anything, so it is not run.
            # Pruned, and infeasible for the sampler, so TPE learns to avoid it.
            trial.set_user_attr("error", redact(f"invalid combination: {e}"))
            trial.set_user_attr("invalid", True)  # not run: does not count against max_trials
            trial.set_user_attr("passed", False)
            trial.set_user_attr("pruned", True)
            names = sorted(self.settings.loaded.config.thresholds.active())
            trial.set_user_attr("constraints", [1.0] * len(names))
            for name in names:
                trial.set_constraint(name, 1.0)
            self.say(f"trial {trial.number}: skipped, invalid combination ({e})")
            raise optuna.TrialPruned() from None

        loaded = LoadedConfig(
            config=config,
            source=None,
            base_dir=s.loaded.base_dir,
            sha256=s.loaded.sha256,
        )
        thresholds = config.thresholds.active()
        trial_dir = s.out_dir / "trials" / f"{trial.number:04d}"
        early: dict[str, float] = {}

        def early_stop(figures: Mapping[str, float]) -> None:
            early.update(figures)
            if not s.tune.prune_hopeless:
                return

            known = {k: v for k, v in thresholds.items() if k in EARLY_THRESHOLDS}
            if known and not decide(known, figures).passed:
                raise _Hopeless

        with record.trial_run(
            s.tracking_uri,
            s.parent_run_id,
            artifact_root=s.loaded.base_dir / "mlartifacts",
            experiment=s.loaded.config.mlflow.experiment,
            study=s.study_name,
            number=trial.number,
            worker=self.tag,
            passes=summary,
        ) as run:
            try:
                report = pipeline.evaluate(
                    loaded,
                    report_dir=trial_dir,
                    early_stop=early_stop,
                    fetch=_pinned(s.teacher_file) if s.teacher_file else None,
                )
            except _Hopeless:
                self._record(trial, early, thresholds, passed=False, pruned=True)
                self.say(
                    f"trial {trial.number}: pruned, fails the gate before latency "
                    f"({int(early['student.file_bytes']):,} bytes, {self.quality.describe(early)})"
                )
                if run is not None:
                    record.record_pruned_trial(run, to_mapping(config), early)
                raise optuna.TrialPruned() from None
            except ConfigError as e:
                trial.set_user_attr("error", redact(e.message))
                self.say(f"trial {trial.number}: {e.message}")
                if run is not None:
                    record.fail_trial(run)
                raise
            figures = report.metrics()
            self._record(trial, figures, thresholds, passed=report.passed, pruned=False)
            value = objective_value(self.space, figures)
            trial.set_user_attr("value", value)
            report = replace(report, config=to_mapping(config))
            write_report_json(report, trial_dir / "report.json")
            verdict = "pass" if report.passed else "fail"
            self.say(
                f"trial {trial.number}: {verdict}, {int(figures['student.file_bytes']):,} bytes, "
                f"{self.quality.describe(figures)}"
            )
            if run is not None:
                record.record_trial(run, report, trial_dir / "report.json", value)
        return value

    def _record(
        self,
        trial: optuna.Trial,
        figures: Mapping[str, float],
        thresholds: Mapping[str, float],
        *,
        passed: bool,
        pruned: bool,
    ) -> None:
        keep = (
            *self.quality.keys(),
            "teacher.file_bytes",
            "student.file_bytes",
            "teacher.latency_ms",
            "student.latency_ms",
            "student.sparsity",
            "delta.compression_ratio",
            "delta.latency_ratio",
        )
        trial.set_user_attr("metrics", {k: float(figures[k]) for k in keep if k in figures})
        trial.set_user_attr("passed", bool(passed))
        trial.set_user_attr("pruned", bool(pruned))
        values = constraints_of(thresholds, figures)
        trial.set_user_attr("constraints", values)
        for name, value in zip(sorted(thresholds), values, strict=True):
            trial.set_constraint(name, value)


def _already_measured(
    trial: optuna.Trial, passes: list[dict[str, Any]], ship: Mapping[str, Any]
) -> Any | None:
    """An earlier finished trial with exactly these passes and ship options, if any.

    A trial stored before ship options could be searched has no ``ship`` attribute: it
    matches a trial whose ship mapping is empty (no ``ship.*`` dimension)."""
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for t in trial.study.get_trials(deepcopy=False, states=done):
        if (
            t.user_attrs.get("passes") == passes
            and t.user_attrs.get("ship", {}) == ship
            and "metrics" in t.user_attrs
        ):
            if t.state == optuna.trial.TrialState.COMPLETE and "value" not in t.user_attrs:
                continue
            return t
    return None


def _describe(p: Mapping[str, Any]) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in p.items() if k != "type")
    return f"{p['type']}({opts})"


def describe_config(passes: Sequence[Mapping[str, Any]], ship: Mapping[str, Any]) -> str:
    """A trial's passes and searched ship options, for progress lines and MLflow."""
    text = ", ".join(_describe(p) for p in passes) or "no passes"
    if ship:
        text += "; ship(" + ", ".join(f"{k}={v}" for k, v in ship.items()) + ")"
    return text


@dataclass
class Outcome:
    """What one ``tune`` call did; :mod:`ci_compress.tuning.results` turns it into files."""

    settings: Settings
    space: Space
    study: optuna.Study
    ran_here: int
    seconds: float


def search(
    loaded: LoadedConfig,
    *,
    max_trials: int | None = None,
    timeout_s: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    jobs: int = 1,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Run trials (in ``jobs`` local processes) until the study's budget is spent."""
    import optuna

    say = progress or (lambda _m: None)
    tune = loaded.config.tune or TuneConfig()
    if loaded.config.tune is None:
        raise ConfigError(
            "the config has no tune: section",
            path="tune",
            hint="add tune: with a space (passes[0].amount: {low: 0.3, high: 0.9}) or a profile (size-first); see README, Tuning",
        )
    if jobs < 1:
        raise ConfigError(f"must be at least 1, got {jobs}", path="--jobs")
    space = resolve(loaded, tune)
    url = storage_url(loaded, tune, storage)
    name = study_name_for(loaded, tune, study_name)
    budget = max_trials if max_trials is not None else tune.max_trials
    if budget < 1:
        raise ConfigError(f"must be at least 1, got {budget}", path="--trials")
    timeout = timeout_s if timeout_s is not None else tune.timeout_s
    start = time.time()
    settings = Settings(
        loaded=loaded,
        tune=tune,
        storage_url=url,
        study_name=name,
        max_trials=budget,
        seed=tune.seed if tune.seed is not None else loaded.config.runtime.seed,
        deadline=start + timeout if timeout else None,
        out_dir=loaded.resolve(tune.dir),
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
    )
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    if loaded.config.model.uri:
        say(f"downloading the teacher {loaded.config.model.uri} once for the study")
        teacher = fetch_teacher(loaded, os.environ, settings.out_dir / "teacher")
        settings = replace(settings, teacher_file=teacher)
    st = open_storage(url)
    try:
        study = optuna.create_study(
            storage=st, study_name=name, direction="minimize", load_if_exists=True
        )
    except Exception as e:
        raise StorageError(f"cannot create or load study {name!r}: {e}") from None
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(space.base_params(), skip_if_exists=True)
    before = len(study.get_trials(deepcopy=False))
    say(
        f"study {name!r}: {before} trial(s) so far, budget {budget}; "
        f"searching {', '.join(d.name for d in space.dimensions) or 'pass toggles'}"
    )
    for note in space.skipped:
        say(f"profile {space.profile}: skipped {note}")
    ran = 0
    if jobs == 1:
        ran = run_worker(settings, space, say)
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(target=_child, args=(replace(settings, worker=w), space), daemon=False)
            for w in range(1, jobs)
        ]
        for p in procs:
            p.start()
        try:
            ran = run_worker(settings, space, say)
        finally:
            for p in procs:
                p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise InfraError(
                f"{len(bad)} of {jobs - 1} worker process(es) failed (exit codes {bad}); see their messages above"
            )
    study = optuna.load_study(study_name=name, storage=st)
    return Outcome(settings, space, study, ran, time.time() - start)


def _child(settings: Settings, space: Space) -> None:
    """Entry point of a spawned local worker: errors print one line and set the exit code."""

    def say(msg: str) -> None:
        print(f"[worker {settings.worker}] {msg}", file=sys.stderr, flush=True)

    try:
        run_worker(settings, space, say)
    except CICompressError as e:
        print(f"Error: worker {settings.worker}: {e.message}", file=sys.stderr, flush=True)
        sys.exit(int(e.exit_code))
