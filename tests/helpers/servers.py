"""A real MLflow server on 127.0.0.1 (sqlite backend, its own artifacts folder, a free
port), started and stopped by the tests. Nothing leaves this machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests


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
    # The server of the environment the tests run in (the dev extra brings Flask-WTF for
    # the basic-auth app), not whichever `mlflow` is first on PATH: another Python's
    # MLflow without it made the auth tests fail.
    beside = Path(sys.executable).parent / "mlflow"
    exe = str(beside) if beside.is_file() else (shutil.which("mlflow") or str(beside))
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
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
