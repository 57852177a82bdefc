"""Fixtures shared by the unit and end-to-end tests; helpers live in ``tests/helpers/``.

The MLflow server is started once per test session (per xdist worker) and stopped at
the end; the demo teachers are trained once per session. Nothing leaves this machine.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Importable from here for test files written before tests/helpers/ existed (branches in
# flight); new tests import them from tests.helpers.*.
from tests.helpers import REPO
from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, cnn_config, write_config
from tests.helpers.servers import MlflowServer, free_port, start_mlflow_server, stop_mlflow_server

__all__ = [
    "REPO",
    "MlflowServer",
    "base_config",
    "cnn_config",
    "free_port",
    "run_cli",
    "start_mlflow_server",
    "stop_mlflow_server",
    "write_config",
]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        stop_mlflow_server(server)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained demo MLP teacher (digits_mlp.safetensors) and its compress.yaml."""
    from ci_compress.demo.train import prepare

    d = tmp_path_factory.mktemp("demo")
    prepare(d, kind="mlp")
    return d


@pytest.fixture
def workdir(tmp_path: Path, demo_dir: Path) -> Path:
    """A fresh folder holding a copy of the demo teacher."""
    shutil.copy(demo_dir / "digits_mlp.safetensors", tmp_path / "digits_mlp.safetensors")
    return tmp_path


@pytest.fixture(scope="session")
def cnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained demo CNN teacher (digits_cnn.safetensors), trained once per session."""
    from safetensors.torch import save_file

    from ci_compress.demo.train import train_teacher

    d = tmp_path_factory.mktemp("cnn")
    model = train_teacher("cnn")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},  # type: ignore[attr-defined]
        str(d / "digits_cnn.safetensors"),
    )
    return d


@pytest.fixture
def cnn_workdir(tmp_path: Path, cnn_dir: Path) -> Path:
    """A fresh folder holding a copy of the demo CNN teacher."""
    shutil.copy(cnn_dir / "digits_cnn.safetensors", tmp_path / "digits_cnn.safetensors")
    return tmp_path
