"""Recording the gate: the only module that imports mlflow.

:class:`Tracker` is the small interface the pipeline talks to. :class:`MlflowTracker`
records into a tracking server or a local sqlite store through ``MlflowClient`` (no
global fluent state); :class:`MemoryTracker` keeps everything in memory for unit tests
and :class:`NullTracker` records nothing (``mlflow.enabled: false``).

Failures become :class:`~ci_compress.errors.TrackingError` (exit code 4) naming the
tracking URI with any credentials redacted. Credentials come only from MLflow's own
environment variables (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``) and are never printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ci_compress.artifacts.download import redact_url
from ci_compress.errors import TrackingError

# A CI gate must fail fast on a dead server; MLflow's defaults retry for minutes.
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
PARAM_VALUE_LIMIT = 6000


class Tracker(Protocol):
    uri: str

    def check(self, experiment: str) -> None: ...
    def start_run(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        *,
        parent_run_id: str | None = None,
    ) -> str: ...
    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def end_run(self, status: str) -> None: ...
    def run_url(self) -> str | None: ...


def resolve_tracking_uri(configured: str | None, environ: Mapping[str, str], base_dir: Path) -> str:
    if configured:
        return configured
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(base_dir / 'mlflow.db').resolve()}"


def _parent_tag(parent_run_id: str | None) -> dict[str, str]:
    return {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}


def redact(text: str) -> str:
    """Remove credentials from URLs and known secret values in an error text."""
    text = re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)
    for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD"):
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "***")
    return text


@dataclass
class MemoryTracker:
    """Keeps runs in memory (unit tests)."""

    uri: str = "memory://"
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str | None = None

    def check(self, experiment: str) -> None:
        return None

    def start_run(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        *,
        parent_run_id: str | None = None,
    ) -> str:
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = {
            "experiment": experiment,
            "name": run_name,
            "tags": {**tags, **_parent_tag(parent_run_id)},
            "params": {},
            "metrics": {},
            "artifacts": [],
            "status": "RUNNING",
        }
        self.current = run_id
        return run_id

    def _run(self) -> dict[str, Any]:
        assert self.current is not None
        return self.runs[self.current]

    def log_params(self, params: Mapping[str, str]) -> None:
        self._run()["params"].update(params)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._run()["metrics"].update(metrics)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._run()["tags"].update(tags)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._run()["artifacts"].append(
            f"{artifact_path + '/' if artifact_path else ''}{path.name}"
        )

    def end_run(self, status: str) -> None:
        self._run()["status"] = status

    def run_url(self) -> str | None:
        return None


class NullTracker(MemoryTracker):
    """Records nothing anyone will read (mlflow.enabled: false, or not required and down)."""

    def __init__(self) -> None:
        super().__init__(uri="none")


class MlflowTracker:
    """Records into MLflow through ``MlflowClient``."""

    def __init__(self, uri: str, *, artifact_root: Path | None = None) -> None:
        for k, v in FAST_FAIL_ENV.items():
            os.environ.setdefault(k, v)

        self.uri = uri
        self.shown_uri = redact_url(uri)
        self.artifact_root = artifact_root
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        with self._errors("connect"):
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=uri)
        import logging

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except TrackingError:
            raise
        except Exception as e:  # MlflowException, requests errors, sqlalchemy errors
            detail = redact(str(e)).splitlines()[0] if str(e) else type(e).__name__
            detail = re.sub(r"\s+", " ", detail)[:300]
            lowered = detail.lower()
            if (
                "401" in detail
                or "403" in detail
                or "unauthorized" in lowered
                or "permission" in lowered
            ):
                hint = "check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD"
            else:
                hint = "check the server is running and the tracking URI (mlflow.tracking_uri or MLFLOW_TRACKING_URI); set mlflow.required: false for local checks"
            raise TrackingError(
                f"MLflow at {self.shown_uri} failed to {what}: {detail}", hint=hint
            ) from None

    def check(self, experiment: str) -> None:
        with self._errors("answer"):
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = None
                if self.artifact_root is not None and self.uri.startswith("sqlite:"):
                    location = (self.artifact_root / experiment).resolve().as_uri()
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location
                )
            else:
                self.experiment_id = exp.experiment_id

    def start_run(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        *,
        parent_run_id: str | None = None,
    ) -> str:
        """Create a run; with ``parent_run_id`` it is nested under that run (MLflow's
        ``mlflow.parentRunId`` tag, as ``mlflow.start_run(nested=True)`` sets it)."""
        if self.experiment_id is None:
            self.check(experiment)
        with self._errors("create a run"):
            run = self.client.create_run(
                self.experiment_id or "0",
                run_name=run_name,
                tags={**tags, **_parent_tag(parent_run_id)},
            )
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in sorted(params.items())]
        with self._errors("log params"):
            for i in range(0, len(items), 100):
                self.client.log_batch(self._id(), params=items[i : i + 100], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
        with self._errors("log metrics"):
            for i in range(0, len(items), 500):
                self.client.log_batch(self._id(), metrics=items[i : i + 500], synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        with self._errors("set tags"):
            self.client.log_batch(
                self._id(),
                tags=[RunTag(k, str(v)) for k, v in sorted(tags.items())],
                synchronous=True,
            )

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        with self._errors(f"store artifact {path.name}"):
            self.client.log_artifact(self._id(), str(path), artifact_path)

    def end_run(self, status: str) -> None:
        if self.run_id is None:
            return
        with self._errors("finish the run"):
            self.client.set_terminated(self.run_id, status=status)

    def run_url(self) -> str | None:
        if self.run_id is None or not self.uri.startswith(("http://", "https://")):
            return None
        return f"{self.shown_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def _id(self) -> str:
        if self.run_id is None:
            raise TrackingError("no MLflow run is active (internal ordering error)")
        return self.run_id
