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

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ci_compress.errors import ArtifactError, CICompressError, InputError, TrackingError
from ci_compress.progress import Warn
from ci_compress.redaction import redact, redact_url

if TYPE_CHECKING:
    from ci_compress.config import LoadedConfig

# A CI gate must fail fast on a dead server; MLflow's defaults retry for minutes
# (7 retries, backoff factor 2, 120 s timeout, and it obeys any Retry-After header).
# Only set when the user has not set them. See request_bound_seconds() for the bound.
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
}
# Always: MlflowClient.set_terminated prints "View run ... at <host>" to stdout, which
# would corrupt `--json` output and could echo a URI with credentials.
FORCED_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# Best-effort clean-up after a failure (mark the run FAILED): one attempt, short timeout,
# so a dead server does not double the time to fail.
CLEANUP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
PARAM_VALUE_LIMIT = 6000
DATASET_DIGEST_CHARS = 32  # MLflow stores dataset digests in a 36-character column
MODEL_FILE_SUFFIXES = (".ccz", ".safetensors", ".pt", ".pth")
# MLflow's rule for param, metric and tag keys (mlflow.utils.validation); 250 characters at most.
_MLFLOW_KEY = re.compile(r"[\w./\- :]{1,250}")
# What MlflowClient.set_terminated accepts.
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


def request_bound_seconds(environ: Mapping[str, str]) -> float:
    """Worst-case seconds one MLflow HTTP request can take before it fails.

    MLflow retries through urllib3: ``1 + MAX_RETRIES`` attempts, each waiting at most
    ``TIMEOUT`` s to connect and ``TIMEOUT`` s for the answer; before retry *n* >= 2 it
    sleeps ``BACKOFF_FACTOR * 2**(n-1)`` s plus up to ``BACKOFF_JITTER`` s (urllib3 2.x
    sleeps 0 before the first retry). Retry-After headers are ignored by our defaults.
    The gate stops at the first request that fails, so this bounds the time to fail.
    """
    env = {**FAST_FAIL_ENV, **{k: v for k, v in environ.items() if k in FAST_FAIL_ENV}}
    retries = int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = float(env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    jitter = float(env["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"])
    timeout = float(env["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    sleeps = sum(min(120.0, factor * 2.0 ** (n - 1)) + jitter for n in range(2, retries + 1))
    return float((retries + 1) * 2 * timeout + sleeps)


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version (what the registry says about it)."""

    name: str
    version: str
    run_id: str | None
    source: str
    status: str
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


# Version tags that say the gate promoted the version (pipeline.promotion_decision).
PROMOTION_REASONS = ("default-branch", "promote-flag")


@dataclass(frozen=True)
class PromotedVersion:
    """A version the gate promoted, with the metrics its gate run recorded (a registry
    read for the trend across builds: ``student.accuracy``, ``student.file_bytes``, ...)."""

    version: str
    run_id: str | None
    metrics: Mapping[str, float]
    current: bool = False  # holds the alias now


def is_promoted(tags: Mapping[str, str]) -> bool:
    """A version the gate moved the alias to (or was about to, and did not fail after)."""
    return (
        tags.get("ci_compress.promotion") in PROMOTION_REASONS
        and tags.get("ci_compress.status") != "failed"
    )


def newest_promoted(
    versions: list[ModelVersionRef], current: str | None, n: int
) -> list[ModelVersionRef]:
    """The ``n`` newest promoted versions (and the alias holder), oldest first."""
    chosen = [v for v in versions if is_promoted(v.tags) or v.version == current]
    chosen.sort(key=lambda v: int(v.version) if v.version.isdigit() else 0)
    return chosen[-n:] if n > 0 else []


@dataclass(frozen=True)
class FetchedModel:
    """A model artifact downloaded from MLflow: the local file and where it came from."""

    path: Path
    uri: str
    version: ModelVersionRef | None = None


def parse_model_uri(uri: str) -> tuple[str, str, str, str]:
    """Split an MLflow model URI into (kind, name_or_run, version_or_alias, sub_path).

    ``kind`` is ``alias``, ``version`` or ``run``. The forms are the ones config.py
    accepts: ``models:/<name>@<alias>``, ``models:/<name>/<version>`` (each with an
    optional ``/<path>`` inside the version) and ``runs:/<run_id>/<path>``.
    """
    m = re.fullmatch(r"models:/([^/@]+)@([\w-]+)(?:/(.+))?", uri)
    if m:
        return "alias", m.group(1), m.group(2), m.group(3) or ""
    m = re.fullmatch(r"models:/([^/@]+)/([0-9]+)(?:/(.+))?", uri)
    if m:
        return "version", m.group(1), m.group(2), m.group(3) or ""
    m = re.fullmatch(r"runs:/([^/]+)/(.+)", uri)
    if m:
        return "run", m.group(1), "", m.group(2)
    raise ArtifactError(
        f"unsupported MLflow model URI {uri!r}",
        hint="use models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>",
    )


def pick_model_file(local: Path, uri: str) -> Path:
    """The one model file inside a downloaded artifact (a file, or a folder holding one)."""
    if local.is_file():
        return local
    found = sorted(
        p for p in local.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_FILE_SUFFIXES
    )
    if len(found) == 1:
        return found[0]
    names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    if not found:
        raise ArtifactError(
            f"{uri} holds no model file ci-compress can read ({', '.join(names[:8]) or 'it is empty'})",
            hint=f"point model.uri at a {', '.join(MODEL_FILE_SUFFIXES)} file inside the artifact, e.g. {uri.rstrip('/')}/<file>",
        )
    raise ArtifactError(
        f"{uri} holds several model files ({', '.join(str(p.relative_to(local)) for p in found[:8])})",
        hint=f"name the one to use: {uri.rstrip('/')}/<file>",
    )


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
    def resume_run(self, run_id: str) -> None: ...
    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def end_run(self, status: str) -> None: ...
    def run_url(self) -> str | None: ...
    def log_dataset(self, dataset: Mapping[str, Any]) -> None: ...
    def champion(self, name: str, alias: str) -> ModelVersionRef | None: ...
    def run_record(self, run_id: str) -> dict[str, dict[str, Any]]: ...
    def fetch(self, uri: str, dest: Path) -> FetchedModel: ...
    def register(
        self, name: str, artifact_path: str, tags: Mapping[str, str]
    ) -> ModelVersionRef: ...
    def set_alias(self, name: str, alias: str, version: str) -> None: ...
    def get_alias(self, name: str, alias: str) -> str | None: ...
    def set_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None: ...
    def promoted_history(self, name: str, alias: str, n: int) -> list[PromotedVersion]: ...
    def create_lock(self, name: str, tags: Mapping[str, str]) -> bool: ...
    def read_lock(self, name: str) -> dict[str, str] | None: ...
    def delete_lock(self, name: str) -> None: ...
    def cleanup(self) -> contextlib.AbstractContextManager[None]: ...


def resolve_tracking_uri(configured: str | None, environ: Mapping[str, str], base_dir: Path) -> str:
    if configured:
        return configured
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(base_dir / 'mlflow.db').resolve()}"


def _parent_tag(parent_run_id: str | None) -> dict[str, str]:
    return {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}


# 401 or 403 as a status code, not digits inside a port (127.0.0.1:40137), an IP or a
# hex run id (…ab401c…): those once turned a dead server into a credentials hint.
_AUTH_STATUS = re.compile(r"(?<![0-9A-Fa-f:.])40[13](?![0-9A-Fa-f])")


def _looks_like_auth_failure(detail: str) -> bool:
    """Whether an MLflow error text says the server refused the credentials."""
    lowered = detail.lower()
    return bool(_AUTH_STATUS.search(detail)) or "unauthorized" in lowered or "permission" in lowered


@dataclass
class MemoryTracker:
    """Keeps runs, artifact files and the registry in memory (unit tests).

    It behaves as :class:`MlflowTracker` does wherever the pipeline could tell them
    apart, and ``tests/e2e/test_tracker_contract.py`` holds the two to that: names,
    params and tags are redacted and stored as strings, a param cannot change, a
    metric's value is the one at its highest step, writes without a run and unknown
    models, versions or statuses are TrackingErrors, and ``fetch`` downloads the
    ``models:/`` and ``runs:/`` URIs it recorded.
    """

    uri: str = "memory://"
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str | None = None
    # registry, kept in memory: name -> {"versions": [ModelVersionRef], "aliases": {alias: version}}
    registry: dict[str, dict[str, Any]] = field(default_factory=dict)
    # artifact files: run id -> {artifact path: bytes}
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # False for NullTracker: it keeps no files and refuses nothing MLflow would refuse.
    like_mlflow: ClassVar[bool] = True

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
        name = redact(run_name)
        self.runs[run_id] = {
            "experiment": experiment,
            "name": name,
            "tags": {
                "mlflow.runName": name,
                **{k: redact(str(v)) for k, v in {**tags, **_parent_tag(parent_run_id)}.items()},
            },
            "params": {},
            "metrics": {},
            "artifacts": [],
            "status": "RUNNING",
        }
        self.current = run_id
        return run_id

    def resume_run(self, run_id: str) -> None:
        """Write to an existing run again (a study's parent run, from a later process)."""
        if run_id not in self.runs:
            raise TrackingError(f"no run {run_id} in the in-memory tracker")
        self.current = run_id

    def _run(self, keys: Iterable[str] = ()) -> dict[str, Any]:
        if self.current is None:
            raise TrackingError("no MLflow run is active (internal ordering error)")
        bad = sorted(k for k in keys if not _MLFLOW_KEY.fullmatch(k) or ".." in k or k[0] == "/")
        if bad and self.like_mlflow:
            raise TrackingError(
                f"MLflow at {self.uri} refused the names {', '.join(map(repr, bad))}: names may only contain alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ), colon(:) and slashes (/)"
            )
        return self.runs[self.current]

    def log_params(self, params: Mapping[str, str]) -> None:
        new = {redact(k): redact(str(v))[:PARAM_VALUE_LIMIT] for k, v in params.items()}
        stored = self._run(new)["params"]
        changed = sorted(k for k, v in new.items() if k in stored and stored[k] != v)
        if changed and self.like_mlflow:
            raise TrackingError(
                f"MLflow at {self.uri} failed to log params: changing param values is not allowed ({', '.join(changed)})"
            )
        stored.update(new)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        run = self._run(metrics)
        history = run.setdefault("history", {})
        for k, v in metrics.items():
            # MLflow's value of a metric is the one at its highest step (the latest on a tie).
            if all(step >= s for s, _ in history.get(k, [])):
                run["metrics"][k] = float(v)
            history.setdefault(k, []).append((step, float(v)))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._run(tags)["tags"].update({k: redact(str(v)) for k, v in tags.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        run = self._run()
        name = f"{artifact_path.strip('/') + '/' if artifact_path else ''}{path.name}"
        if not self.like_mlflow:
            run["artifacts"].append(name)
            return
        if not path.is_file():
            raise TrackingError(
                f"MLflow at {self.uri} failed to store artifact {path.name}: no file {path}"
            )
        self.files.setdefault(str(self.current), {})[name] = path.read_bytes()
        run["artifacts"].append(name)

    def end_run(self, status: str) -> None:
        if self.current is None:
            return
        if status not in RUN_STATUSES and self.like_mlflow:
            raise TrackingError(
                f"MLflow at {self.uri} failed to finish the run: unknown status {status!r}"
            )
        self._run()["status"] = status

    def run_url(self) -> str | None:
        return None

    def log_dataset(self, dataset: Mapping[str, Any]) -> None:
        self._run().setdefault("inputs", []).append(dict(dataset))

    def _model(self, name: str) -> dict[str, Any]:
        model = self.registry.get(name)
        if model is None:
            raise TrackingError(f"MLflow at {self.uri}: registered model {name!r} not found")
        return model

    def _version(self, name: str, version: str) -> ModelVersionRef:
        """A snapshot of one version, with the aliases that point at it now."""
        model = self._model(name)
        versions: list[ModelVersionRef] = model["versions"]
        for v in versions:
            if v.version == version:
                aliases = tuple(sorted(a for a, n in model["aliases"].items() if n == version))
                return replace(v, aliases=aliases, tags=dict(v.tags))
        raise TrackingError(f"MLflow at {self.uri}: {name} has no version {version}")

    def champion(self, name: str, alias: str) -> ModelVersionRef | None:
        version = self.get_alias(name, alias)
        return None if version is None else self._version(name, version)

    def run_record(self, run_id: str) -> dict[str, dict[str, Any]]:
        run = self.runs.get(run_id, {})
        return {"metrics": dict(run.get("metrics", {})), "tags": dict(run.get("tags", {}))}

    def fetch(self, uri: str, dest: Path) -> FetchedModel:
        import shutil

        kind, name, ref, sub = parse_model_uri(uri)
        version: ModelVersionRef | None = None
        if kind == "run":
            run_id, prefix = name, sub
        else:
            try:
                number = self.get_alias(name, ref) if kind == "alias" else ref
                if number is None:
                    raise TrackingError(f"{name} has no alias {ref}")
                version = self._version(name, number)
            except TrackingError as e:
                raise ArtifactError(
                    f"model.uri {uri} not found in MLflow at {self.uri}: {e.message}",
                    hint="check the registered model name, version or alias (or run id and artifact path) in the MLflow UI",
                ) from None
            _, run_id, _, path = parse_model_uri(version.source)
            prefix = f"{path}/{sub}" if sub else path
        prefix = prefix.strip("/")
        stored = self.files.get(run_id or "", {})
        found = {p: b for p, b in stored.items() if p == prefix or p.startswith(prefix + "/")}
        if not found:
            raise ArtifactError(
                f"model.uri {uri} not found in MLflow at {self.uri}: no artifact {prefix!r} in run {run_id}",
                hint="check the registered model name, version or alias (or run id and artifact path) in the MLflow UI",
            )
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        # Laid out as MLflow downloads it: dest/<last part of the prefix>[/<rest>].
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        for p, data in found.items():
            target = dest / p.removeprefix(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        local = dest / prefix.removeprefix(base)
        return FetchedModel(path=pick_model_file(local, uri), uri=uri, version=version)

    def register(self, name: str, artifact_path: str, tags: Mapping[str, str]) -> ModelVersionRef:
        self._run()
        run_id = self.current
        model = self.registry.setdefault(name, {"versions": [], "aliases": {}})
        ref = ModelVersionRef(
            name=name,
            version=str(len(model["versions"]) + 1),
            run_id=run_id,
            source=f"runs:/{run_id}/{artifact_path}",
            status="READY",
            tags={k: str(v) for k, v in tags.items()},
        )
        model["versions"].append(ref)
        return self._version(name, ref.version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._version(name, version)
        self._model(name)["aliases"][alias] = version

    def get_alias(self, name: str, alias: str) -> str | None:
        model = self.registry.get(name)
        return None if model is None else model["aliases"].get(alias)

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        self._version(name, version)
        versions = self._model(name)["versions"]
        for i, v in enumerate(versions):
            if v.version == version:
                versions[i] = replace(v, tags={**v.tags, **{k: str(x) for k, x in tags.items()}})

    def promoted_history(self, name: str, alias: str, n: int) -> list[PromotedVersion]:
        """The last ``n`` promoted versions of ``name``, oldest first, with run metrics."""
        model = self.registry.get(name)
        if model is None:
            return []
        current = model["aliases"].get(alias)
        return [
            PromotedVersion(
                version=v.version,
                run_id=v.run_id,
                metrics=dict(self.runs.get(v.run_id or "", {}).get("metrics", {})),
                current=v.version == current,
            )
            for v in newest_promoted(list(model["versions"]), current, n)
        ]

    # A lock is a registered model of its own, with its lease in tags (record.promotion_lock).

    def create_lock(self, name: str, tags: Mapping[str, str]) -> bool:
        """Create the registered model ``name`` with ``tags``; False if it exists already
        (one atomic step, as MLflow's unique model name makes it on the server)."""
        fresh: dict[str, Any] = {
            "versions": [],
            "aliases": {},
            "tags": {k: redact(str(v)) for k, v in tags.items()},
        }
        return self.registry.setdefault(name, fresh) is fresh

    def read_lock(self, name: str) -> dict[str, str] | None:
        model = self.registry.get(name)
        return None if model is None else dict(model.get("tags", {}))

    def delete_lock(self, name: str) -> None:
        self.registry.pop(name, None)

    @contextmanager
    def cleanup(self) -> Iterator[None]:
        yield


class NullTracker(MemoryTracker):
    """Records nothing anyone will read (mlflow.enabled: false, or not required and down)."""

    like_mlflow = False

    def __init__(self) -> None:
        super().__init__(uri="none")


class MlflowTracker:
    """Records into MLflow through ``MlflowClient``."""

    def __init__(self, uri: str, *, artifact_root: Path | None = None) -> None:
        for k, v in FAST_FAIL_ENV.items():
            os.environ.setdefault(k, v)
        # MLflow prints "View run ... at: <tracking URI>" to stdout when a run ends:
        # that corrupts `--json` output and prints URL credentials. Never let it.
        os.environ.update(FORCED_ENV)

        self.uri = uri
        self.shown_uri = redact_url(uri)
        self.artifact_root = artifact_root
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.experiment: str | None = None  # the name experiment_id belongs to
        with self._errors("connect"):
            import logging

            from mlflow import MlflowClient

            # After the import (which sets mlflow's loggers up) and before the client
            # opens the store: a new sqlite store otherwise logs its table creation.
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
            self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except CICompressError:
            raise
        except Exception as e:  # MlflowException, requests errors, sqlalchemy errors
            detail = redact(str(e)).splitlines()[0] if str(e) else type(e).__name__
            detail = re.sub(r"\s+", " ", detail)[:300]
            if _looks_like_auth_failure(detail):
                given = [
                    v
                    for v in (
                        "MLFLOW_TRACKING_TOKEN",
                        "MLFLOW_TRACKING_USERNAME",
                        "MLFLOW_TRACKING_PASSWORD",
                    )
                    if os.environ.get(v)
                ]
                hint = (
                    f"the server refused the credentials in {', '.join(given)}; check them"
                    if given
                    else "the server needs credentials: set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
                )
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
            self.experiment = experiment

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
        if self.experiment_id is None or experiment != self.experiment:
            self.check(experiment)
        with self._errors("create a run"):
            run = self.client.create_run(
                self.experiment_id or "0",
                run_name=redact(run_name),
                tags={k: redact(str(v)) for k, v in {**tags, **_parent_tag(parent_run_id)}.items()},
            )
        self.run_id = run.info.run_id
        return self.run_id

    def resume_run(self, run_id: str) -> None:
        """Write to an existing run again (a study's parent run, from a later process)."""
        self.run_id = run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [
            Param(redact(k), redact(str(v))[:PARAM_VALUE_LIMIT]) for k, v in sorted(params.items())
        ]
        with self._errors("log params"):
            for i in range(0, len(items), 100):
                self.client.log_batch(self._id(), params=items[i : i + 100], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
        with self._errors("log metrics"):
            for i in range(0, len(items), 500):
                self.client.log_batch(self._id(), metrics=items[i : i + 500], synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        with self._errors("set tags"):
            self.client.log_batch(
                self._id(),
                tags=[RunTag(k, redact(str(v))) for k, v in sorted(tags.items())],
                synchronous=True,
            )

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        with self._errors(f"store artifact {path.name}"):
            self.client.log_artifact(self._id(), str(path), artifact_path)

    def end_run(self, status: str) -> None:
        if self.run_id is None:
            return
        import contextlib
        import io

        with self._errors("finish the run"), contextlib.redirect_stdout(io.StringIO()):
            self.client.set_terminated(self.run_id, status=status)

    def run_url(self) -> str | None:
        if self.run_id is None or not self.uri.startswith(("http://", "https://")):
            return None
        return f"{self.shown_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    @contextmanager
    def cleanup(self) -> Iterator[None]:
        """Best-effort requests after a failure: one attempt, short timeout."""
        saved = {k: os.environ.get(k) for k in CLEANUP_ENV}
        os.environ.update(CLEANUP_ENV)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def log_dataset(self, dataset: Mapping[str, Any]) -> None:
        """Log the holdout as the run's dataset input (context ``evaluation``).

        Only metadata goes to MLflow (name, digest, source, schema, row count): the
        data itself stays where it is. ``digest`` is the start of the holdout's sha256;
        the full sha256 is in the profile and the ``ci_compress.holdout_sha256`` tag.
        """
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        schema = None
        shapes = dataset.get("schema_shapes")
        if shapes:
            import numpy as np
            from mlflow.types.schema import Schema, TensorSpec

            # The layout mlflow.data.from_numpy writes, so the UI shows it the same way.
            schema = {
                "mlflow_tensorspec": {
                    "features": Schema(
                        [TensorSpec(np.dtype(shapes["x_dtype"]), (-1, *shapes["x_shape"]))]
                    ).to_json(),
                    "targets": Schema([TensorSpec(np.dtype(shapes["y_dtype"]), (-1,))]).to_json(),
                }
            }
        entity = Dataset(
            name=str(dataset["name"]),
            digest=str(dataset["sha256"])[:DATASET_DIGEST_CHARS],
            source_type=str(dataset.get("source_type", "code")),
            source=json.dumps(dataset.get("source", {}), sort_keys=True),
            schema=json.dumps(schema) if schema else None,
            profile=json.dumps(
                {"num_rows": dataset.get("samples"), "sha256": dataset["sha256"]}, sort_keys=True
            ),
        )
        with self._errors("log the holdout dataset"):
            self.client.log_inputs(
                self._id(),
                datasets=[
                    DatasetInput(entity, tags=[InputTag("mlflow.data.context", "evaluation")])
                ],
            )

    def _version_ref(self, mv: Any) -> ModelVersionRef:
        return ModelVersionRef(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or None,
            source=mv.source,
            status=str(mv.status),
            aliases=tuple(getattr(mv, "aliases", ()) or ()),
            tags=dict(mv.tags or {}),
        )

    @staticmethod
    def _not_found(e: Exception) -> bool:
        code = getattr(e, "error_code", "")
        text = str(e).lower()
        return code == "RESOURCE_DOES_NOT_EXIST" or (
            code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text
        )

    def get_alias(self, name: str, alias: str) -> str | None:
        ref = self.champion(name, alias)
        return None if ref is None else ref.version

    def champion(self, name: str, alias: str) -> ModelVersionRef | None:
        """The version holding ``alias`` now, or None (no such model, or alias unset)."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"look up {name}@{alias}"):
            try:
                mv = self.client.get_model_version_by_alias(name, alias)
            except MlflowException as e:
                if self._not_found(e):
                    return None
                raise
        return self._version_ref(mv)

    def run_record(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Metrics and tags recorded by a run (the champion's gate run)."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"read run {run_id}"):
            try:
                run = self.client.get_run(run_id)
            except MlflowException as e:
                if self._not_found(e):
                    return {"metrics": {}, "tags": {}}
                raise
        return {"metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}

    def fetch(self, uri: str, dest: Path) -> FetchedModel:
        """Download a ``models:/`` or ``runs:/`` URI into ``dest`` and pick its model file.

        Registry URIs are resolved with this client (``mlflow.artifacts`` would read a
        ``models:/`` URI from the default registry, not this server), then the version's
        download URI is fetched. Unknown model, version, alias, run or path:
        ArtifactError naming the URI (exit 3); server trouble: TrackingError (exit 4).
        """
        import shutil

        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        kind, name, ref, sub = parse_model_uri(uri)
        version: ModelVersionRef | None = None
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with self._errors(f"download {uri}"):
            try:
                if kind == "run":
                    artifact_uri = uri
                else:
                    mv = (
                        self.client.get_model_version_by_alias(name, ref)
                        if kind == "alias"
                        else self.client.get_model_version(name, ref)
                    )
                    version = self._version_ref(mv)
                    if version.status != "READY":
                        raise ArtifactError(
                            f"{uri} is version {version.version} in status {version.status}, not READY",
                            hint="wait for the registry to finish creating it, or use another version",
                        )
                    base = self.client.get_model_version_download_uri(name, version.version)
                    artifact_uri = f"{base.rstrip('/')}/{sub}" if sub else base
                local = Path(
                    download_artifacts(
                        artifact_uri=artifact_uri,
                        dst_path=str(dest),
                        tracking_uri=self.uri,
                        registry_uri=self.uri,
                    )
                )
            except MlflowException as e:
                if self._not_found(e) or getattr(e, "error_code", "") == "INVALID_PARAMETER_VALUE":
                    detail = redact(str(e)).splitlines()[0][:300]
                    raise ArtifactError(
                        f"model.uri {uri} not found in MLflow at {self.shown_uri}: {detail}",
                        hint="check the registered model name, version or alias (or run id and artifact path) in the MLflow UI",
                    ) from None
                raise
        return FetchedModel(path=pick_model_file(local, uri), uri=uri, version=version)

    def register(self, name: str, artifact_path: str, tags: Mapping[str, str]) -> ModelVersionRef:
        """New version of ``name`` from this run's ``artifact_path``; waits until READY."""
        from mlflow.exceptions import MlflowException

        run_id = self._id()
        with self._errors(f"register a version of {name}"):
            try:
                self.client.create_registered_model(name)
            except MlflowException as e:
                if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
            import logging

            logging.getLogger("mlflow.store.model_registry.abstract_store").setLevel(
                logging.WARNING
            )
            mv = self.client.create_model_version(
                name,
                f"runs:/{run_id}/{artifact_path}",
                run_id=run_id,
                tags={k: redact(str(v)) for k, v in tags.items()},
                await_creation_for=120,
            )
            mv = self.client.get_model_version(name, str(mv.version))
        ref = self._version_ref(mv)
        if ref.status != "READY":
            raise TrackingError(
                f"MLflow at {self.shown_uri}: {name} version {ref.version} is {ref.status}, not READY; the alias was not moved",
                hint="check the registry's storage; rerun the job",
            )
        return ref

    def set_alias(self, name: str, alias: str, version: str) -> None:
        with self._errors(f"move alias {alias} of {name} to version {version}"):
            self.client.set_registered_model_alias(name, alias, version)

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        with self._errors(f"tag {name} version {version}"):
            for k, v in sorted(tags.items()):
                self.client.set_model_version_tag(name, version, k, redact(str(v)))

    def promoted_history(self, name: str, alias: str, n: int) -> list[PromotedVersion]:
        """The last ``n`` promoted versions of ``name``, oldest first: the registry's
        version tags say which were promoted, each version's gate run holds its metrics.
        A model not registered yet has no history ([])."""
        current = self.get_alias(name, alias)
        quoted = name.replace("\\", "\\\\").replace("'", "\\'")
        with self._errors(f"read the versions of {name}"):
            found = self.client.search_model_versions(f"name='{quoted}'")
            versions = newest_promoted([self._version_ref(mv) for mv in found], current, n)
        out = []
        for v in versions:
            metrics = self.run_record(v.run_id)["metrics"] if v.run_id else {}
            out.append(
                PromotedVersion(
                    version=v.version,
                    run_id=v.run_id,
                    metrics={k: float(x) for k, x in metrics.items()},
                    current=v.version == current,
                )
            )
        return out

    def create_lock(self, name: str, tags: Mapping[str, str]) -> bool:
        """Create the registered model ``name`` with ``tags`` in one request; False when
        it exists. The server's unique model name makes this atomic: of several gates
        creating it at once, exactly one gets True (the others RESOURCE_ALREADY_EXISTS)."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"take the lock {name}"):
            try:
                self.client.create_registered_model(
                    name,
                    tags={k: redact(str(v)) for k, v in tags.items()},
                    description="ci-compress promotion lock: held while a gate moves the alias; "
                    "deleted when it is done (a stale one is broken after its lease expires)",
                )
            except MlflowException as e:
                if getattr(e, "error_code", "") == "RESOURCE_ALREADY_EXISTS":
                    return False
                raise
        return True

    def read_lock(self, name: str) -> dict[str, str] | None:
        """The tags of the registered model ``name`` (a lock's lease), None if there is none."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"read the lock {name}"):
            try:
                model = self.client.get_registered_model(name)
            except MlflowException as e:
                if self._not_found(e):
                    return None
                raise
        return {str(k): str(v) for k, v in (model.tags or {}).items()}

    def delete_lock(self, name: str) -> None:
        """Delete the registered model ``name``; one that is already gone is no error."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"release the lock {name}"):
            try:
                self.client.delete_registered_model(name)
            except MlflowException as e:
                if not self._not_found(e):
                    raise

    def _id(self) -> str:
        if self.run_id is None:
            raise TrackingError("no MLflow run is active (internal ordering error)")
        return self.run_id


def download_run_file(uri: str, run_id: str, name: str, dest: Path) -> Path:
    """Download one artifact file of a run (e.g. ``report.json``) into ``dest``.

    Used by ``ci-compress reproduce <run id>``; errors become TrackingError (exit 4),
    a run or file that does not exist an InputError naming it (exit 3).
    """

    for k, v in FAST_FAIL_ENV.items():
        os.environ.setdefault(k, v)
    shown = redact_url(uri)
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=uri)
        try:
            client.get_run(run_id)
        except MlflowException as e:
            if (
                "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", ""))
                or "not found" in str(e).lower()
            ):
                raise InputError(
                    f"MLflow run {run_id} not found at {shown}",
                    hint="check the run id and the tracking URI (--tracking-uri or MLFLOW_TRACKING_URI)",
                ) from None
            raise
        names = {f.path for f in client.list_artifacts(run_id)}
        if name not in names:
            raise InputError(
                f"MLflow run {run_id} has no artifact {name!r} (it has: {', '.join(sorted(names)) or 'none'})",
                hint="only runs recorded by `ci-compress run` can be reproduced",
            )
        dest.mkdir(parents=True, exist_ok=True)
        return Path(client.download_artifacts(run_id, name, str(dest)))
    except (InputError, TrackingError):
        raise
    except Exception as e:
        detail = re.sub(
            r"\s+", " ", redact(str(e)).splitlines()[0] if str(e) else type(e).__name__
        )[:300]
        raise TrackingError(
            f"MLflow at {shown} failed to download {name} of run {run_id}: {detail}",
            hint="check the server is running and the tracking URI (--tracking-uri or MLFLOW_TRACKING_URI)",
        ) from None


# ---------------------------------------------------------------- opening a tracker, fetching models


def make_tracker(loaded: LoadedConfig, environ: Mapping[str, str], warn: Warn) -> Tracker:
    """The tracker the config asks for: MLflow, checked to answer; a :class:`NullTracker`
    when MLflow is disabled, or unreachable while ``mlflow.required: false`` (``warn``
    says so)."""
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
        warn(f"{e.message}; continuing without MLflow (mlflow.required: false)")
        return NullTracker()
    return tracker


def fetch_teacher(loaded: LoadedConfig, environ: Mapping[str, str], dest: Path) -> Path:
    """Download the config's ``model.uri`` teacher into ``dest``; returns the model file."""
    uri = loaded.config.model.uri
    fetch = model_fetcher(loaded, environ, NullTracker(), {})
    if not uri or fetch is None:
        raise ValueError("fetch_teacher needs a config with model.uri")
    return fetch(uri, dest)


def model_fetcher(
    loaded: LoadedConfig, environ: Mapping[str, str], tracker: Tracker, fetched: dict[str, Any]
) -> Callable[[str, Path], Path] | None:
    """Downloader for ``model.uri`` (MLflow is needed even with mlflow.enabled: false).

    Each URI is downloaded once: ``explain`` after a failed gate loads the same teacher
    again and gets the file the gate already fetched (the same version, not a newer one
    an alias may point at by then).
    """
    if not loaded.config.model.uri:
        return None
    done: dict[str, Path] = {}

    def fetch(uri: str, dest: Path) -> Path:
        if uri in done:
            return done[uri]
        client: Tracker = tracker
        if not isinstance(tracker, MlflowTracker):
            client = MlflowTracker(
                resolve_tracking_uri(loaded.config.mlflow.tracking_uri, environ, loaded.base_dir)
            )
        got = client.fetch(uri, dest)
        fetched["uri"] = uri
        if got.version is not None:
            fetched.update(
                registered_model=got.version.name,
                version=got.version.version,
                run_id=got.version.run_id,
            )
        done[uri] = got.path
        return got.path

    return fetch
