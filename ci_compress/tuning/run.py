"""The library entry point of ``ci-compress tune``: search, summarise, record.

:func:`tune` returns a :class:`~ci_compress.tuning.results.TuneResult`; it never prints
or exits (``progress`` receives progress lines). MLflow gets one parent run per study
(its id is kept in the study, so every process and CI job on the same storage nests its
trials under the same parent) and one nested run per trial.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ci_compress.ci.env import detect
from ci_compress.errors import CICompressError
from ci_compress.files import atomic_write
from ci_compress.tracking import MlflowTracker, make_tracker
from ci_compress.tuning import study as st
from ci_compress.tuning.config import TuneConfig
from ci_compress.tuning.results import finish, render_markdown
from ci_compress.tuning.space import resolve
from ci_compress.tuning.study import StorageError, open_storage

if TYPE_CHECKING:
    from ci_compress.config import LoadedConfig
    from ci_compress.tracking import MlflowTracker
    from ci_compress.tuning.results import TuneResult

PARENT_ATTR = "ci_compress.mlflow_parent_run_id"


def tune(
    loaded: LoadedConfig,
    *,
    max_trials: int | None = None,
    timeout_s: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    jobs: int = 1,
    environ: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search for the most compressed passing config; write tuned.yaml if one passed."""
    import os

    environ = os.environ if environ is None else environ
    say = progress or (lambda _m: None)
    tcfg = loaded.config.tune or TuneConfig()
    if loaded.config.tune is not None:
        resolve(loaded, tcfg)  # fail on a bad space before touching storage or MLflow
    name = st.study_name_for(loaded, tcfg, study_name)
    url = st.storage_url(loaded, tcfg, storage)

    tracker, parent = None, None
    if loaded.config.tune is not None and loaded.config.mlflow.enabled:
        tracker, parent = _parent_run(loaded, url, name, environ, say)

    try:
        outcome = st.search(
            loaded,
            max_trials=max_trials,
            timeout_s=timeout_s,
            storage=url,
            study_name=name,
            jobs=jobs,
            parent_run_id=parent,
            tracking_uri=tracker.uri if tracker is not None else None,
            progress=say,
        )
        result = finish(outcome)
    except BaseException:
        if tracker is not None and parent is not None:
            with contextlib.suppress(CICompressError):
                tracker.end_run("FAILED")
        raise
    if tracker is not None and parent is not None:
        result.mlflow = {"parent_run_id": parent, "tracking_uri": tracker.shown_uri}
        url_ = tracker.run_url()
        if url_:
            result.mlflow["run_url"] = url_
        assert result.report_md is not None
        atomic_write(result.report_md, render_markdown(result))
        _record_parent(tracker, result)
    return result


def _parent_run(
    loaded: LoadedConfig,
    storage_url: str,
    name: str,
    environ: Mapping[str, str],
    say: Callable[[str], None],
) -> tuple[MlflowTracker | None, str | None]:
    import optuna

    cfg = loaded.config.mlflow
    tracker = make_tracker(loaded, environ, say)  # a NullTracker when MLflow may be skipped
    if not isinstance(tracker, MlflowTracker):
        return None, None
    storage = open_storage(storage_url)
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction="minimize", load_if_exists=True
        )
    except Exception as e:
        raise StorageError(f"cannot create or load study {name!r}: {e}") from None
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent:
        tracker.run_id = str(parent)
        return tracker, str(parent)
    ci = detect(environ, loaded.base_dir)
    parent = tracker.start_run(
        cfg.experiment,
        f"tune-{name}",
        {**ci.tags(), "ci_compress.kind": "tune", "ci_compress.study": name},
    )
    study.set_user_attr(PARENT_ATTR, parent)
    return tracker, parent


def _record_parent(tracker: MlflowTracker, result: TuneResult) -> None:
    counts = result.counts()
    metrics = {f"tune.trials.{k}": float(v) for k, v in counts.items()}
    metrics["tune.trials"] = float(len(result.trials))
    if result.best is not None:
        metrics.update({f"best.{k}": v for k, v in result.best.metrics.items()})
        metrics["best.trial"] = float(result.best.number)
    tracker.log_metrics(metrics)
    for path in (result.report_md, result.plot, result.tuned_path):
        if path is not None:
            tracker.log_artifact(path, "tune")
    tracker.set_tags(
        {
            "ci_compress.verdict": "pass" if result.passed else "fail",
            "ci_compress.best_trial": str(result.best.number) if result.best else "none",
        }
    )
    tracker.end_run("FINISHED")
