"""The library entry point of ``ci-compress tune``: search, summarise, record.

:func:`tune` returns a :class:`~ci_compress.tuning.results.TuneResult`; it never prints
or exits (``progress`` receives progress lines). MLflow gets one parent run per study
(its id is kept in the study, so every process and CI job on the same storage nests its
trials under the same parent) and one nested run per trial.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from ci_compress import record
from ci_compress.ci.env import detect
from ci_compress.config.tune import TuneConfig
from ci_compress.files import atomic_write
from ci_compress.progress import warn_of
from ci_compress.record import RecordedRun
from ci_compress.tracking import MlflowTracker, make_tracker
from ci_compress.tuning import study as st
from ci_compress.tuning.results import finish, render_markdown
from ci_compress.tuning.space import resolve
from ci_compress.tuning.study import StorageError, open_storage

if TYPE_CHECKING:
    from ci_compress.config import LoadedConfig
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

    with _parent_run(loaded, url, name, environ, say) as parent:
        outcome = st.search(
            loaded,
            max_trials=max_trials,
            timeout_s=timeout_s,
            storage=url,
            study_name=name,
            jobs=jobs,
            parent_run_id=parent.run_id if parent is not None else None,
            tracking_uri=parent.tracker.uri if parent is not None else None,
            progress=say,
        )
        result = finish(outcome)
        if parent is not None and parent.run_id is not None:
            result.mlflow = {
                "parent_run_id": parent.run_id,
                "tracking_uri": record.shown_uri(parent.tracker),
            }
            url_ = parent.tracker.run_url()
            if url_:
                result.mlflow["run_url"] = url_
            assert result.report_md is not None
            atomic_write(result.report_md, render_markdown(result))
            record.record_tune(
                parent,
                counts=result.counts(),
                trials=len(result.trials),
                best_trial=result.best.number if result.best is not None else None,
                best_metrics=result.best.metrics if result.best is not None else {},
                passed=result.passed,
                files=(result.report_md, result.plot, result.tuned_path),
            )
    return result


@contextlib.contextmanager
def _parent_run(
    loaded: LoadedConfig,
    storage_url: str,
    name: str,
    environ: Mapping[str, str],
    say: Callable[[str], None],
) -> Iterator[RecordedRun | None]:
    """The study's parent run (None without MLflow): started by the first process on
    the storage, its id kept in the study, resumed by every later one."""
    import optuna

    if loaded.config.tune is None or not loaded.config.mlflow.enabled:
        yield None
        return
    tracker = make_tracker(loaded, environ, warn_of(say))
    if not isinstance(tracker, MlflowTracker):  # a NullTracker when MLflow may be skipped
        yield None
        return
    storage = open_storage(storage_url)
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction="minimize", load_if_exists=True
        )
    except Exception as e:
        raise StorageError(f"cannot create or load study {name!r}: {e}") from None
    parent = study.user_attrs.get(PARENT_ATTR)
    with record.tune_run(
        tracker,
        experiment=loaded.config.mlflow.experiment,
        study=name,
        ci=detect(environ, loaded.base_dir),
        resume_run_id=str(parent) if parent else None,
    ) as run:
        if not parent:
            study.set_user_attr(PARENT_ATTR, run.run_id)
        yield run
