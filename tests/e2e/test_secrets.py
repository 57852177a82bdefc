"""Secrets never leave the process: planted everywhere, searched for in every output.

Secrets are planted in MLflow's credential variables, in URL userinfo (model.url and
mlflow.tracking_uri, both through ``${ENV}`` interpolation) and in an interpolated run
name; the gate runs for real against the MLflow server fixture and a local model host.
Then stdout, stderr, report.json, report.md, the MLflow run's params, tags, name and the
config artifact it stored are searched for every secret.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ci_compress.config import parse_config
from ci_compress.errors import ConfigError
from tests.helpers.cli import run_cli, run_console
from tests.helpers.configs import base_config, write_config
from tests.helpers.local_http import LocalServer, start
from tests.helpers.servers import MlflowServer

SECRETS = {
    "MLFLOW_TRACKING_TOKEN": "tok-Zq81-secret-token",
    "MLFLOW_TRACKING_PASSWORD": "pw-Zq82-secret-password",
    "MODEL_HOST_PASSWORD": "url-Zq83-secret",
    "MLFLOW_URL_PASSWORD": "uri-Zq84-secret",
    "RUN_SUFFIX": "run-Zq85-secret",
}


@pytest.fixture(scope="module")
def host() -> Iterator[LocalServer]:
    s = start()
    yield s
    s.stop()


def assert_clean(text: str, where: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked into {where}"


@pytest.mark.slow
def test_planted_secrets_appear_in_no_output(
    workdir: Path, mlflow_server: MlflowServer, host: LocalServer
) -> None:
    data = (workdir / "digits_mlp.safetensors").read_bytes()
    host.files["teacher.safetensors"] = data
    model_url = host.url("/files/teacher.safetensors").replace(
        "http://", "http://ci:${MODEL_HOST_PASSWORD}@"
    )
    tracking = mlflow_server.uri.replace("http://", "http://ci:${MLFLOW_URL_PASSWORD}@")
    cfg = write_config(
        workdir,
        base_config(
            model={
                "url": model_url,
                "sha256": hashlib.sha256(data).hexdigest(),
                "factory": "ci_compress.demo.models:digits_mlp",
                "allow_http": True,
            },
            mlflow={
                "enabled": True,
                "tracking_uri": tracking,
                "experiment": "secrets",
                "run_name": "gate-${RUN_SUFFIX}",
            },
            thresholds={"max_accuracy_drop": 5.0},
        ),
    )
    env = {**SECRETS, "MLFLOW_TRACKING_USERNAME": "ci"}
    # A real process, so every sink is its own: warnings, logging, C code writing to fd 2.
    proc = run_console("run", "--config", str(cfg), cwd=workdir, env=env)  # not quiet: progress too
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc.stdout, "stdout")
    assert_clean(proc.stderr, "stderr")
    report_json = (workdir / "report" / "report.json").read_text()
    assert_clean(report_json, "report.json")
    assert_clean((workdir / "report" / "report.md").read_text(), "report.md")
    report = json.loads(report_json)
    # The interpolated fields show where the value came from, not the value.
    assert report["config"]["model"]["url"].startswith("http://ci:${MODEL_HOST_PASSWORD}@127.0.0.1")
    assert report["config"]["mlflow"]["run_name"] == "gate-${RUN_SUFFIX}"
    assert report["mlflow"]["tracking_uri"].startswith("http://***@127.0.0.1")

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(report["mlflow"]["run_id"])
    assert_clean(json.dumps(run.data.params), "MLflow params")
    assert_clean(json.dumps(run.data.tags), "MLflow tags")
    assert_clean(run.info.run_name or "", "MLflow run name")
    assert run.data.params["model.url"].startswith("http://ci:${MODEL_HOST_PASSWORD}@")
    stored = client.download_artifacts(run.info.run_id, "config", str(workdir / "dl"))
    for f in Path(stored).iterdir():
        assert_clean(f.read_text(), f"MLflow artifact config/{f.name}")
    for f in (
        Path(client.download_artifacts(run.info.run_id, "report.json", str(workdir / "dl2"))),
    ):
        assert_clean(f.read_text(), "MLflow artifact report.json")


@pytest.mark.slow
def test_secrets_stay_out_of_error_messages(workdir: Path, host: LocalServer) -> None:
    host.files["teacher.safetensors"] = b"not the pinned file"
    cfg = write_config(
        workdir,
        base_config(
            model={
                "url": host.url("/files/teacher.safetensors").replace(
                    "http://", "http://ci:${MODEL_HOST_PASSWORD}@"
                ),
                "sha256": "0" * 64,
                "factory": "ci_compress.demo.models:digits_mlp",
                "allow_http": True,
            }
        ),
    )
    proc = run_cli("run", "--config", str(cfg), cwd=workdir, env=SECRETS)
    assert proc.returncode == 3
    assert "Error: sha256 of http://***@127.0.0.1" in proc.stderr
    assert_clean(proc.stdout + proc.stderr, "the error output")


def test_interpolation_reads_only_the_braced_form() -> None:
    raw = base_config(
        mlflow={"enabled": False, "experiment": "${EXP}-$HOME-$${EXP}", "run_name": "${EXP}"}
    )
    config = parse_config(raw, environ={"EXP": "nightly"})
    assert config.mlflow.experiment == "nightly-$HOME-$nightly"
    assert config.mlflow.run_name == "nightly"


def test_missing_variable_names_the_field() -> None:
    raw = base_config(model={"path": "${MODEL_DIR}/m.safetensors", "factory": "a.b:c"})
    with pytest.raises(ConfigError, match=r"model.path: environment variable MODEL_DIR is not set"):
        parse_config(raw, environ={})
