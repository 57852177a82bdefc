"""Faults against real MLflow servers: a server killed mid-run, a cancelled job, bad credentials.

Each test that breaks a server starts its own (function scope) behind
:class:`tests.faultproxy.FaultProxy`, a reverse proxy on 127.0.0.1 that fires an
action when a given MLflow REST call arrives. After the fault, the test reads the
server's own sqlite store directly with MlflowClient to see what was recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.helpers.cli import console_command, console_env, run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.servers import MlflowServer, start_mlflow_server, stop_mlflow_server

pytestmark = pytest.mark.slow

GH_MAIN = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_REF_NAME": "main",
    "GITHUB_SHA": "c" * 40,
}


@pytest.fixture
def proxied_server(tmp_path: Path) -> Iterator[tuple[MlflowServer, FaultProxy]]:
    """A dedicated server (destroyed by the test) behind a fault-injecting proxy."""
    server = start_mlflow_server(tmp_path / "srv", timeout=300)
    proxy = FaultProxy(server.port)
    try:
        yield server, proxy
    finally:
        proxy.close()
        if server.proc.poll() is None:
            stop_mlflow_server(server)


def _config(workdir: Path, uri: str, name: str, passes: list[dict[str, Any]]) -> Path:
    cfg = base_config(
        mlflow={"enabled": True, "tracking_uri": uri, "experiment": name, "registered_model": name},
        passes=passes,
        thresholds={"max_accuracy_drop": 5.0},
    )
    return write_config(workdir, cfg)


def _store(server: MlflowServer) -> MlflowClient:
    """The server's own store, read without the (dead) server."""
    db = f"sqlite:///{server.root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=db, registry_uri=db)


def _seed_champion(workdir: Path, uri: str, name: str) -> None:
    """Version 1 holding @champion: the demo teacher packed as a real student.ccz.

    Recorded directly with MlflowClient (the shape ci-compress records) to keep the
    fault tests to one CLI run each.
    """
    from ci_compress.config import ModelSource
    from ci_compress.loading.models import load_model_file
    from ci_compress.packing.file import pack

    src = ModelSource(path="digits_mlp.safetensors", factory="ci_compress.demo.models:digits_mlp")
    teacher = load_model_file(workdir / "digits_mlp.safetensors", src)
    ccz = workdir / "seed" / "student.ccz"
    ccz.parent.mkdir()
    pack(teacher.module, ccz, passes=[], level=3)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment(name)
    run = client.create_run(exp, tags={"ci_compress.registered_version": "1"})
    client.log_artifact(run.info.run_id, str(ccz), "student")
    client.set_terminated(run.info.run_id, "FINISHED")
    client.create_registered_model(name)
    client.create_model_version(name, f"runs:/{run.info.run_id}/student", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")


def _kill(server: MlflowServer) -> None:
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=30)


def test_server_killed_at_the_alias_step_leaves_the_alias_and_exits_4(
    workdir: Path, proxied_server: tuple[MlflowServer, FaultProxy]
) -> None:
    server, proxy = proxied_server
    name = f"killed-{uuid.uuid4().hex[:6]}"
    fault_at = "registered-models/alias"
    _seed_champion(workdir, server.uri, name)
    assert _store(server).get_model_version_by_alias(name, "champion").version == 1

    # The server dies the moment the second gate registers its version / moves the alias.
    proxy.arm("POST", fault_at, lambda: _kill(server))
    second = _config(
        workdir, proxy.uri, name, [{"type": "prune", "amount": 0.3}, {"type": "quantize"}]
    )
    start = time.monotonic()
    proc = run_cli("run", "--config", str(second), "--quiet", cwd=workdir, env=GH_MAIN)
    elapsed = time.monotonic() - start
    assert server.proc.poll() is not None, "the fault did not fire"
    assert proc.returncode == 4, proc.stderr
    assert f"Error: MLflow at {proxy.uri} failed to" in proc.stderr
    assert "check the server is running" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 90  # retries are bounded: seconds, not MLflow's default minutes

    store = _store(server)
    assert store.get_model_version_by_alias(name, "champion").version == 1  # alias untouched
    versions = {int(v.version): v for v in store.search_model_versions(f"name='{name}'")}
    (run,) = [
        r
        for r in store.search_runs([store.get_experiment_by_name(name).experiment_id])
        if r.data.tags.get("ci_compress.registered_version") != "1"
    ]
    # Version 2 is complete (READY, verdict recorded) but the alias never moved to it.
    assert sorted(versions) == [1, 2] and versions[2].status == "READY"
    assert versions[2].tags["ci_compress.verdict"] == "pass"
    assert versions[2].tags["ci_compress.baseline_version"] == "1"
    assert run.data.tags["ci_compress.registered_version"] == "2"
    # Nothing left behind locally (issue 16 item 4): report.json, report.md and the
    # student were written before the alias step; the gate could not finish, so they go.
    assert _left_behind(workdir) == []


def test_cancelled_job_marks_the_run_failed_and_keeps_the_alias(
    workdir: Path, proxied_server: tuple[MlflowServer, FaultProxy]
) -> None:
    """CI cancels with SIGTERM while the gate waits on the registry: no promotion, run FAILED."""
    server, proxy = proxied_server
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    _seed_champion(workdir, server.uri, name)

    arrived, release = threading.Event(), threading.Event()

    def hold() -> None:
        arrived.set()
        release.wait(120)

    proxy.arm("POST", "model-versions/create", hold)
    second = _config(
        workdir, proxy.uri, name, [{"type": "prune", "amount": 0.3}, {"type": "quantize"}]
    )
    cli = subprocess.Popen(
        [*console_command(), "run", "--config", str(second), "--quiet"],
        cwd=workdir,
        env=console_env(GH_MAIN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert arrived.wait(300), "the gate never reached registration"
        cli.send_signal(signal.SIGTERM)
        _, stderr = cli.communicate(timeout=120)
    finally:
        release.set()
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, stderr
    client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    exp = client.get_experiment_by_name(name).experiment_id
    runs = sorted(client.search_runs([exp]), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]
    assert runs[1].data.tags["ci_compress.status"] == "failed"
    assert _left_behind(workdir) == []  # the shipped student went with the cancel


def _left_behind(workdir: Path) -> list[str]:
    from ci_compress.pipeline import outputs

    return [p.name for p in outputs(workdir / "report", "student.ccz") if p.is_file()]


# ---------------------------------------------------------------- credentials

ADMIN_PASSWORD = "Adm1n-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server --app-name basic-auth`` (needs Flask-WTF, in the dev extra)."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    ini = root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = start_mlflow_server(
        root,
        timeout=300,
        app_name="basic-auth",
        env={
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        },
    )
    try:
        yield server
    finally:
        stop_mlflow_server(server)


@pytest.mark.parametrize(
    ("creds", "secret"),
    [
        ({"MLFLOW_TRACKING_TOKEN": "tok-" + uuid.uuid4().hex}, "MLFLOW_TRACKING_TOKEN"),
        (
            {
                "MLFLOW_TRACKING_USERNAME": "admin",
                "MLFLOW_TRACKING_PASSWORD": "pw-" + uuid.uuid4().hex,
            },
            "MLFLOW_TRACKING_PASSWORD",
        ),
    ],
)
def test_refused_credentials_exit_4_without_printing_them(
    workdir: Path, auth_server: MlflowServer, creds: dict[str, str], secret: str
) -> None:
    cfg = write_config(
        workdir,
        base_config(
            mlflow={
                "enabled": True,
                "tracking_uri": auth_server.uri,
                "experiment": "auth",
                "registered_model": "auth",
            }
        ),
    )
    proc = run_cli("run", "--config", str(cfg), cwd=workdir, env=creds)
    assert proc.returncode == 4, proc.stderr
    assert "401" in proc.stderr and "the server refused the credentials in" in proc.stderr
    assert secret in proc.stderr  # names the variable...
    assert creds[secret] not in proc.stdout + proc.stderr  # ...never its value
    assert "Traceback" not in proc.stderr


def test_right_credentials_record_and_promote(workdir: Path, auth_server: MlflowServer) -> None:
    cfg = write_config(
        workdir,
        base_config(
            mlflow={
                "enabled": True,
                "tracking_uri": auth_server.uri,
                "experiment": "auth-ok",
                "registered_model": "auth-ok",
            }
        ),
    )
    env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=workdir, env={**env, **GH_MAIN})
    assert proc.returncode == 0, proc.stderr
    assert ADMIN_PASSWORD not in proc.stdout + proc.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["registry"]["promoted"] is True
    import requests

    r = requests.get(
        f"{auth_server.uri}/api/2.0/mlflow/registered-models/alias",
        params={"name": "auth-ok", "alias": "champion"},
        auth=("admin", ADMIN_PASSWORD),
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["model_version"]["version"] == "1"
