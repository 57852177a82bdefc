"""The contract every :class:`~ci_compress.tracking.Tracker` keeps, as one test class.

The shape of optuna's ``StorageTestCase``: :class:`TrackerContract` holds the tests and
asks for a ``backend`` fixture it does not define; ``tests/e2e/test_tracker_contract.py``
subclasses it once per implementation (the in-memory tracker, MlflowTracker on the MLflow
server, MlflowTracker on a local sqlite store) and supplies the fixture. The in-memory
tracker is what the unit tests run the pipeline against, so anything the pipeline can
observe must match MLflow's: what the tracker's own read methods return (``run_record``,
``champion``, ``get_alias``, ``fetch``) and what a reader of the store sees (status,
params, metrics, tags, artifacts, datasets). A :class:`Backend` gives the second: a
fresh tracker and a :class:`RunView` of a run as stored.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from ci_compress import redaction
from ci_compress.errors import ArtifactError, TrackingError
from ci_compress.tracking import (
    DATASET_DIGEST_CHARS,
    PARAM_VALUE_LIMIT,
    MemoryTracker,
    MlflowTracker,
    Tracker,
)


@dataclass
class RunView:
    """One run as its store holds it."""

    experiment: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]  # the value MLflow shows: the one at the highest step
    history: dict[str, list[tuple[int, float]]]  # key -> sorted (step, value)
    tags: dict[str, str]
    artifacts: set[str]  # file paths, "dir/file"
    datasets: list[tuple[str, str, str]] = field(default_factory=list)  # (name, digest, context)


class Backend(Protocol):
    def tracker(self) -> Tracker: ...
    def view(self, tracker: Tracker, run_id: str) -> RunView: ...


class MemoryBackend:
    def tracker(self) -> Tracker:
        return MemoryTracker()

    def view(self, tracker: Tracker, run_id: str) -> RunView:
        assert isinstance(tracker, MemoryTracker)
        run = tracker.runs[run_id]
        return RunView(
            experiment=run["experiment"],
            name=run["name"],
            status=run["status"],
            params=dict(run["params"]),
            metrics=dict(run["metrics"]),
            history={k: sorted(v) for k, v in run.get("history", {}).items()},
            tags=dict(run["tags"]),
            artifacts=set(run["artifacts"]),
            datasets=[
                (d["name"], str(d["sha256"])[:DATASET_DIGEST_CHARS], "evaluation")
                for d in run.get("inputs", [])
            ],
        )


class MlflowBackend:
    def __init__(self, uri: str, artifact_root: Path | None = None) -> None:
        self.uri = uri
        self.artifact_root = artifact_root

    def tracker(self) -> Tracker:
        return MlflowTracker(self.uri, artifact_root=self.artifact_root)

    def view(self, tracker: Tracker, run_id: str) -> RunView:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        run = client.get_run(run_id)

        def files(path: str | None = None) -> Iterator[str]:
            for f in client.list_artifacts(run_id, path):
                if f.is_dir:
                    yield from files(f.path)
                else:
                    yield f.path

        return RunView(
            experiment=client.get_experiment(run.info.experiment_id).name,
            name=run.info.run_name,
            status=run.info.status,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            history={
                k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
                for k in run.data.metrics
            },
            tags=dict(run.data.tags),
            artifacts=set(files()),
            datasets=[
                (
                    d.dataset.name,
                    d.dataset.digest,
                    {t.key: t.value for t in d.tags}.get("mlflow.data.context", ""),
                )
                for d in (run.inputs.dataset_inputs if run.inputs else [])
            ],
        )


def _unique(prefix: str) -> str:
    """Names for one test: the MLflow server is shared by every test of a session."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class TrackerContract:
    """Each test names one promise of the Tracker protocol."""

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("a subclass supplies the backend fixture")

    @pytest.fixture
    def tracker(self, backend: Backend) -> Tracker:
        return backend.tracker()

    @pytest.fixture
    def experiment(self) -> str:
        return _unique("contract")

    @pytest.fixture
    def model_file(self, tmp_path: Path) -> Path:
        path = tmp_path / "out" / "student.ccz"
        path.parent.mkdir()
        path.write_bytes(b"CCZ" + os.urandom(64))
        return path

    @pytest.fixture(autouse=True)
    def _isolated(self) -> Iterator[None]:
        """MlflowTracker sets its fast-fail variables in os.environ; secrets are global."""
        saved = dict(os.environ)
        redaction.clear()
        yield
        redaction.clear()
        os.environ.clear()
        os.environ.update(saved)

    # ------------------------------------------------------------ runs

    def test_start_run_opens_a_new_running_run_with_its_name_and_tags(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        tracker.check(experiment)
        first = tracker.start_run(experiment, "gate-1", {"team": "vision"})
        second = tracker.start_run(experiment, "gate-2", {})
        assert first != second
        view = backend.view(tracker, first)
        assert (view.experiment, view.name, view.status) == (experiment, "gate-1", "RUNNING")
        assert view.tags["team"] == "vision"
        assert view.tags["mlflow.runName"] == "gate-1"
        assert backend.view(tracker, second).status == "RUNNING"

    def test_check_is_idempotent_and_start_run_needs_no_check(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        tracker.check(experiment)
        tracker.check(experiment)
        run = tracker.start_run(experiment, "r", {})
        other = backend.tracker()
        unchecked = other.start_run(experiment, "s", {})
        assert backend.view(tracker, run).experiment == experiment
        assert backend.view(other, unchecked).experiment == experiment

    def test_each_run_lands_in_the_experiment_it_names(
        self, backend: Backend, tracker: Tracker
    ) -> None:
        a, b = _unique("exp-a"), _unique("exp-b")
        tracker.check(a)
        in_a = tracker.start_run(a, "r", {})
        in_b = tracker.start_run(b, "r", {})
        assert backend.view(tracker, in_a).experiment == a
        assert backend.view(tracker, in_b).experiment == b

    def test_a_nested_run_names_its_parent(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        parent = tracker.start_run(experiment, "study", {})
        child = tracker.start_run(experiment, "trial-0", {}, parent_run_id=parent)
        assert backend.view(tracker, child).tags["mlflow.parentRunId"] == parent
        assert "mlflow.parentRunId" not in backend.view(tracker, parent).tags

    @pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
    def test_end_run_sets_the_status(
        self, backend: Backend, tracker: Tracker, experiment: str, status: str
    ) -> None:
        run = tracker.start_run(experiment, "r", {})
        tracker.end_run(status)
        assert backend.view(tracker, run).status == status

    def test_end_run_with_an_unknown_status_is_a_tracking_error(
        self, tracker: Tracker, experiment: str
    ) -> None:
        tracker.start_run(experiment, "r", {})
        with pytest.raises(TrackingError):
            tracker.end_run("DONE")

    def test_end_run_without_a_run_does_nothing(self, tracker: Tracker) -> None:
        tracker.end_run("FAILED")

    @pytest.mark.parametrize(
        "write",
        [
            "log_params",
            "log_metrics",
            "set_tags",
            "log_artifact",
            "log_dataset",
            "register",
        ],
    )
    def test_writes_without_a_run_are_tracking_errors(
        self, tracker: Tracker, model_file: Path, write: str
    ) -> None:
        calls: dict[str, Any] = {
            "log_params": lambda: tracker.log_params({"a": "1"}),
            "log_metrics": lambda: tracker.log_metrics({"m": 1.0}),
            "set_tags": lambda: tracker.set_tags({"t": "v"}),
            "log_artifact": lambda: tracker.log_artifact(model_file),
            "log_dataset": lambda: tracker.log_dataset(DATASET),
            "register": lambda: tracker.register(_unique("m"), "student", {}),
        }
        with pytest.raises(TrackingError):
            calls[write]()

    def test_run_url_is_none_or_names_the_run(self, tracker: Tracker, experiment: str) -> None:
        assert tracker.run_url() is None
        run = tracker.start_run(experiment, "r", {})
        url = tracker.run_url()
        assert url is None or (url.startswith(("http://", "https://")) and run in url)

    # ------------------------------------------------------------ params, metrics, tags

    def test_params_are_stored_as_strings(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        run = tracker.start_run(experiment, "r", {})
        tracker.log_params({"passes.0.amount": 0.5, "passes.0.type": "prune", "n": 3})
        tracker.log_params({f"k{i}": str(i) for i in range(150)})  # more than one batch
        params = backend.view(tracker, run).params
        assert params["passes.0.amount"] == "0.5" and params["n"] == "3"
        assert params["passes.0.type"] == "prune" and params["k149"] == "149"
        assert len(params) == 153

    def test_a_long_param_value_is_cut_to_the_limit(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        run = tracker.start_run(experiment, "r", {})
        tracker.log_params({"config": "x" * (PARAM_VALUE_LIMIT + 500)})
        assert backend.view(tracker, run).params["config"] == "x" * PARAM_VALUE_LIMIT

    def test_a_param_may_be_logged_again_but_never_changed(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        run = tracker.start_run(experiment, "r", {})
        tracker.log_params({"a": "1"})
        tracker.log_params({"a": "1"})
        with pytest.raises(TrackingError):
            tracker.log_params({"a": "2"})
        assert backend.view(tracker, run).params["a"] == "1"

    def test_a_metric_shows_its_value_at_the_highest_step_and_keeps_its_history(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        run = tracker.start_run(experiment, "r", {})
        tracker.log_metrics({"pass.seconds": 1.0, "gate.passed": 1}, step=0)
        tracker.log_metrics({"pass.seconds": 3.0}, step=2)
        tracker.log_metrics({"pass.seconds": 2.0}, step=1)
        view = backend.view(tracker, run)
        assert view.metrics == {"pass.seconds": 3.0, "gate.passed": 1.0}
        assert view.history["pass.seconds"] == [(0, 1.0), (1, 2.0), (2, 3.0)]
        assert tracker.run_record(run)["metrics"] == {"pass.seconds": 3.0, "gate.passed": 1.0}
        assert all(type(v) is float for v in tracker.run_record(run)["metrics"].values())

    def test_tags_can_be_overwritten_and_are_strings(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        run = tracker.start_run(experiment, "r", {"ci_compress.status": "running"})
        tracker.set_tags({"ci_compress.status": "done", "count": 2})
        tags = backend.view(tracker, run).tags
        assert tags["ci_compress.status"] == "done" and tags["count"] == "2"
        assert tracker.run_record(run)["tags"]["ci_compress.status"] == "done"

    def test_registered_secrets_never_reach_the_store(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        secret = "s3cr3t-" + uuid.uuid4().hex
        redaction.register(secret, "${TOKEN}")
        run = tracker.start_run(experiment, f"gate {secret}", {"t": f"x{secret}"})
        tracker.log_params({"url": f"https://h/?t={secret}"})
        tracker.set_tags({"later": secret})
        view = backend.view(tracker, run)
        stored = [view.name, *view.params.values(), *view.tags.values()]
        assert not [s for s in stored if secret in s]
        assert view.name == "gate ${TOKEN}" and view.tags["later"] == "${TOKEN}"
        assert view.params["url"] == "https://h/?t=${TOKEN}" and view.tags["t"] == "x${TOKEN}"

    @pytest.mark.parametrize("key", ["lr@2", "a{b}", "x" * 251, "../up", "/abs"])
    def test_names_mlflow_refuses_are_tracking_errors(
        self, tracker: Tracker, experiment: str, key: str
    ) -> None:
        tracker.start_run(experiment, "r", {})
        with pytest.raises(TrackingError):
            tracker.log_params({key: "1"})
        with pytest.raises(TrackingError):
            tracker.log_metrics({key: 1.0})
        with pytest.raises(TrackingError):
            tracker.set_tags({key: "v"})

    def test_run_record_reads_any_run_and_an_unknown_one_is_empty(
        self, tracker: Tracker, experiment: str
    ) -> None:
        old = tracker.start_run(experiment, "champion-gate", {"ci_compress.verdict": "pass"})
        tracker.log_metrics({"student.accuracy": 0.97})
        tracker.end_run("FINISHED")
        tracker.start_run(experiment, "new-gate", {})
        record = tracker.run_record(old)
        assert record["metrics"] == {"student.accuracy": 0.97}
        assert record["tags"]["ci_compress.verdict"] == "pass"
        assert tracker.run_record(uuid.uuid4().hex) == {"metrics": {}, "tags": {}}

    def test_the_holdout_dataset_is_recorded_by_name_and_digest(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        run = tracker.start_run(experiment, "r", {})
        tracker.log_dataset(DATASET)
        assert backend.view(tracker, run).datasets == [
            ("digits-test", DATASET["sha256"][:DATASET_DIGEST_CHARS], "evaluation")
        ]

    # ------------------------------------------------------------ artifacts and fetch

    def test_artifacts_land_under_their_path_and_come_back_by_run_uri(
        self, backend: Backend, tracker: Tracker, experiment: str, model_file: Path, tmp_path: Path
    ) -> None:
        report = model_file.with_name("report.json")
        report.write_text("{}")
        run = tracker.start_run(experiment, "r", {})
        tracker.log_artifact(model_file, "student")
        tracker.log_artifact(report)
        assert backend.view(tracker, run).artifacts == {"student/student.ccz", "report.json"}
        for uri in (f"runs:/{run}/student/student.ccz", f"runs:/{run}/student"):
            got = tracker.fetch(uri, tmp_path / "dl")
            assert got.uri == uri and got.version is None
            assert got.path.name == "student.ccz" and got.path.is_relative_to(tmp_path / "dl")
            assert got.path.read_bytes() == model_file.read_bytes()

    def test_a_missing_artifact_file_is_a_tracking_error(
        self, tracker: Tracker, experiment: str, tmp_path: Path
    ) -> None:
        tracker.start_run(experiment, "r", {})
        with pytest.raises(TrackingError):
            tracker.log_artifact(tmp_path / "nope.ccz", "student")

    def test_fetch_replaces_what_dest_held(
        self, tracker: Tracker, experiment: str, model_file: Path, tmp_path: Path
    ) -> None:
        run = tracker.start_run(experiment, "r", {})
        tracker.log_artifact(model_file, "student")
        dest = tmp_path / "dl"
        dest.mkdir()
        (dest / "stale.ccz").write_bytes(b"old")
        got = tracker.fetch(f"runs:/{run}/student", dest)
        assert got.path.read_bytes() == model_file.read_bytes()
        assert not (dest / "stale.ccz").exists()

    # ------------------------------------------------------------ registry

    def _registered(
        self, tracker: Tracker, experiment: str, model_file: Path, versions: int = 1
    ) -> tuple[str, str]:
        name = _unique("model")
        run = tracker.start_run(experiment, "r", {})
        tracker.log_artifact(model_file, "student")
        for _ in range(versions):
            tracker.register(name, "student", {"ci_compress.verdict": "pass"})
        return name, run

    def test_register_numbers_ready_versions_of_this_run(
        self, tracker: Tracker, experiment: str, model_file: Path
    ) -> None:
        name = _unique("model")
        run = tracker.start_run(experiment, "r", {})
        tracker.log_artifact(model_file, "student")
        first = tracker.register(name, "student", {"ci_compress.verdict": "pass", "n": 1})
        second = tracker.register(name, "student", {})
        assert (first.name, first.version, second.version) == (name, "1", "2")
        assert first.status == "READY" and first.run_id == run
        assert first.tags == {"ci_compress.verdict": "pass", "n": "1"}
        assert first.aliases == () and second.tags == {}
        assert first.source == f"runs:/{run}/student"

    def test_no_champion_before_an_alias_is_set(
        self, tracker: Tracker, experiment: str, model_file: Path
    ) -> None:
        assert tracker.champion(_unique("unknown-model"), "champion") is None
        assert tracker.get_alias(_unique("unknown-model"), "champion") is None
        name, _ = self._registered(tracker, experiment, model_file)
        assert tracker.champion(name, "champion") is None
        assert tracker.get_alias(name, "champion") is None

    def test_set_alias_makes_the_champion_and_moves(
        self, tracker: Tracker, experiment: str, model_file: Path
    ) -> None:
        name, run = self._registered(tracker, experiment, model_file, versions=2)
        tracker.set_alias(name, "champion", "1")
        champion = tracker.champion(name, "champion")
        assert champion is not None
        assert (champion.name, champion.version, champion.run_id) == (name, "1", run)
        assert champion.aliases == ("champion",) and champion.status == "READY"
        assert champion.tags == {"ci_compress.verdict": "pass"}
        tracker.set_alias(name, "champion", "2")
        assert tracker.get_alias(name, "champion") == "2"
        moved = tracker.champion(name, "champion")
        assert moved is not None and moved.version == "2" and moved.aliases == ("champion",)

    def test_set_alias_to_an_unknown_model_or_version_is_a_tracking_error(
        self, tracker: Tracker, experiment: str, model_file: Path
    ) -> None:
        name, _ = self._registered(tracker, experiment, model_file)
        with pytest.raises(TrackingError):
            tracker.set_alias(name, "champion", "7")
        with pytest.raises(TrackingError):
            tracker.set_alias(_unique("unknown-model"), "champion", "1")
        assert tracker.get_alias(name, "champion") is None

    def test_version_tags_are_added_and_returned_refs_are_snapshots(
        self, tracker: Tracker, experiment: str, model_file: Path
    ) -> None:
        name = _unique("model")
        tracker.start_run(experiment, "r", {})
        tracker.log_artifact(model_file, "student")
        ref = tracker.register(name, "student", {"ci_compress.status": "running"})
        tracker.set_version_tags(name, ref.version, {"ci_compress.status": "failed", "n": 2})
        tracker.set_alias(name, "champion", ref.version)
        now = tracker.champion(name, "champion")
        assert now is not None and now.tags == {"ci_compress.status": "failed", "n": "2"}
        assert ref.tags == {"ci_compress.status": "running"}

    def test_version_tags_of_an_unknown_version_are_a_tracking_error(
        self, tracker: Tracker, experiment: str, model_file: Path
    ) -> None:
        name, _ = self._registered(tracker, experiment, model_file)
        with pytest.raises(TrackingError):
            tracker.set_version_tags(name, "9", {"k": "v"})

    @pytest.mark.parametrize(
        "form", ["models:/{name}/1", "models:/{name}@champion", "models:/{name}/1/student.ccz"]
    )
    def test_fetch_downloads_a_registered_version(
        self, tracker: Tracker, experiment: str, model_file: Path, tmp_path: Path, form: str
    ) -> None:
        name, run = self._registered(tracker, experiment, model_file)
        tracker.set_alias(name, "champion", "1")
        uri = form.format(name=name)
        got = tracker.fetch(uri, tmp_path / "dl")
        assert got.uri == uri and got.path.name == "student.ccz"
        assert got.path.is_relative_to(tmp_path / "dl")
        assert got.path.read_bytes() == model_file.read_bytes()
        assert got.version is not None
        assert (got.version.name, got.version.version, got.version.run_id) == (name, "1", run)

    @pytest.mark.parametrize(
        "form",
        [
            "models:/{unknown}/1",
            "models:/{name}/5",
            "models:/{name}@nobody",
            "models:/{name}/1/nope.ccz",
            "runs:/{run}/nope.ccz",
        ],
    )
    def test_fetch_of_something_not_there_is_an_artifact_error(
        self, tracker: Tracker, experiment: str, model_file: Path, tmp_path: Path, form: str
    ) -> None:
        name, run = self._registered(tracker, experiment, model_file)
        uri = form.format(name=name, run=run, unknown=_unique("unknown-model"))
        with pytest.raises(ArtifactError):
            tracker.fetch(uri, tmp_path / "dl")

    # ------------------------------------------------------------ locks (record.promotion_lock)

    def test_a_lock_is_created_once_and_read_back_with_its_lease(self, tracker: Tracker) -> None:
        name = _unique("model") + ".ci-compress-lock"
        lease = {"ci_compress.lock.holder": "run-a", "ci_compress.lock.expires": "123.5"}
        assert tracker.read_lock(name) is None
        assert tracker.create_lock(name, lease) is True
        assert tracker.create_lock(name, {"ci_compress.lock.holder": "run-b"}) is False
        assert tracker.read_lock(name) == lease
        tracker.delete_lock(name)
        assert tracker.read_lock(name) is None
        tracker.delete_lock(name)  # already gone: no error
        assert tracker.create_lock(name, {"ci_compress.lock.holder": "run-b"}) is True
        tracker.delete_lock(name)

    def test_a_lock_is_no_champion_and_no_version_of_its_model(
        self, tracker: Tracker, experiment: str, model_file: Path
    ) -> None:
        name, _ = self._registered(tracker, experiment, model_file)
        tracker.set_alias(name, "champion", "1")
        lock = name + ".ci-compress-lock"
        assert tracker.create_lock(lock, {"ci_compress.lock.holder": "r"})
        champion = tracker.champion(name, "champion")
        assert champion is not None and champion.version == "1"
        assert tracker.champion(lock, "champion") is None
        assert [v.version for v in tracker.promoted_history(name, "champion", 5)] == ["1"]
        tracker.delete_lock(lock)

    def test_of_threads_racing_to_create_a_lock_exactly_one_wins(
        self, backend: Backend, tracker: Tracker
    ) -> None:
        import threading

        name = _unique("model") + ".ci-compress-lock"
        won: list[str] = []
        errors: list[BaseException] = []
        # One client per gate on a store; the in-memory store lives in its tracker.
        shared = isinstance(tracker, MemoryTracker)
        trackers = [tracker if shared else backend.tracker() for _ in range(6)]
        start = threading.Barrier(len(trackers))

        def take(i: int, t: Tracker) -> None:
            try:
                start.wait()
                if t.create_lock(name, {"ci_compress.lock.holder": f"run-{i}"}):
                    won.append(f"run-{i}")
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=take, args=(i, t)) for i, t in enumerate(trackers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == [] and len(won) == 1
        assert trackers[0].read_lock(name) == {"ci_compress.lock.holder": won[0]}
        trackers[0].delete_lock(name)

    # ------------------------------------------------------------ failure clean-up

    def test_cleanup_lets_the_failure_path_record_and_restores_the_environment(
        self, backend: Backend, tracker: Tracker, experiment: str
    ) -> None:
        run = tracker.start_run(experiment, "r", {})
        before = dict(os.environ)
        with tracker.cleanup():
            tracker.set_tags({"ci_compress.status": "failed"})
            tracker.end_run("FAILED")
        assert dict(os.environ) == before
        view = backend.view(tracker, run)
        assert view.status == "FAILED" and view.tags["ci_compress.status"] == "failed"


DATASET: dict[str, Any] = {
    "name": "digits-test",
    "sha256": "ab" * 32,
    "samples": 540,
    "source_type": "code",
    "source": {"builtin": "digits", "split": "test"},
    "schema_shapes": {"x_dtype": "float32", "x_shape": [64], "y_dtype": "int64"},
}
