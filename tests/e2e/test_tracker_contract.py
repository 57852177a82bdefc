"""The Tracker contract (tests/helpers/tracker_contract.py) run over every tracker:
the in-memory one the unit tests use, and MlflowTracker on the MLflow server and on a
local sqlite store (the default when no tracking URI is set)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.servers import MlflowServer
from tests.helpers.tracker_contract import Backend, MemoryBackend, MlflowBackend, TrackerContract


class TestMemoryTracker(TrackerContract):
    @pytest.fixture
    def backend(self) -> Backend:
        return MemoryBackend()


@pytest.mark.slow
class TestMlflowTrackerOnTheServer(TrackerContract):
    @pytest.fixture
    def backend(self, mlflow_server: MlflowServer) -> Backend:
        return MlflowBackend(mlflow_server.uri)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("mlflow-sqlite")
    return f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts"


@pytest.mark.slow
class TestMlflowTrackerOnSqlite(TrackerContract):
    @pytest.fixture
    def backend(self, sqlite_store: tuple[str, Path]) -> Backend:
        uri, artifacts = sqlite_store
        return MlflowBackend(uri, artifact_root=artifacts)
