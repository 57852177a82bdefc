"""Shared fixtures: a real MLflow server on 127.0.0.1, a trained demo teacher, the CLI.

The server is started once per test session (sqlite backend, temporary artifacts
folder, a free port) and stopped at the end. Nothing leaves this machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MlflowServer:
    uri: str
    root: Path
    proc: subprocess.Popen[bytes]
    port: int


def start_mlflow_server(
    root: Path,
    port: int | None = None,
    timeout: float = 120.0,
    *,
    app_name: str | None = None,
    env: dict[str, str] | None = None,
) -> MlflowServer:
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    log = (root / "server.log").open("ab")
    proc = subprocess.Popen(
        [
            exe,
            "server",
            *(["--app-name", app_name] if app_name else []),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{uri}/health", timeout=1).status_code == 200:
                return MlflowServer(uri=uri, root=root, proc=proc, port=port)
        except requests.RequestException:
            pass
        time.sleep(0.3)
    stop_mlflow_server(MlflowServer(uri, root, proc, port))
    raise RuntimeError("mlflow server did not answer /health in time")


def stop_mlflow_server(server: MlflowServer) -> None:
    import signal

    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)


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


def base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 1,
        "model": {
            "path": "digits_mlp.safetensors",
            "factory": "ci_compress.demo.models:digits_mlp",
        },
        "data": {"holdout": {"builtin": "digits", "split": "test"}},
        "passes": [{"type": "prune", "amount": 0.5}, {"type": "quantize"}],
        "thresholds": {"max_accuracy_drop": 2.0},
        "mlflow": {"enabled": False},
        "report": {"dir": "report"},
        "runtime": {"latency_repeats": 3, "latency_warmup": 1},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def write_config(folder: Path, config: dict[str, Any], name: str = "compress.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (``python -m ci_compress``)."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GITHUB_", "GITLAB", "CI_", "JENKINS", "MLFLOW_"))
    }
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ci_compress", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


def cnn_config(**overrides: Any) -> dict[str, Any]:
    """base_config for the demo CNN."""
    return base_config(
        model={"path": "digits_cnn.safetensors", "factory": "ci_compress.demo.models:digits_cnn"},
        **overrides,
    )
