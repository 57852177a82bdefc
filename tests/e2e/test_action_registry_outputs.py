"""The GitHub Action's registry outputs, for real: action.yml's steps, the real CLI, a real
MLflow server. ``model-version`` is the version the gate registered (it was always empty
while the renderer read a key the pipeline never wrote); without MLflow the run id is
empty, as the README says, not an in-memory placeholder."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, MlflowServer, base_config, run_cli, write_config
from tests.helpers.action_harness import parse_output_file, run_action

pytestmark = pytest.mark.slow


def _pull_request_env(tmp: Path, number: int = 9) -> dict[str, str]:
    event = tmp / "event.json"
    event.write_text(json.dumps({"number": number, "pull_request": {"number": number}}))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GITHUB_", "GITLAB", "CI_", "JENKINS", "MLFLOW_", "INPUT_"))
    }
    env.update(
        {
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "GITHUB_ACTIONS": "true",
            "GITHUB_EVENT_NAME": "pull_request",
            "GITHUB_EVENT_PATH": str(event),
            "GITHUB_REF": f"refs/pull/{number}/merge",
            "GITHUB_HEAD_REF": "feature",
            "GITHUB_REPOSITORY": "acme/models",
            "GITHUB_SHA": "c" * 40,
        }
    )
    return env


def test_model_version_output_is_the_version_the_gate_registered(
    workdir: Path, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    name = f"outputs-{uuid.uuid4().hex[:8]}"
    cfg = base_config(
        passes=[{"type": "quantize"}],
        mlflow={"enabled": True, "experiment": name, "registered_model": name},
    )
    write_config(workdir, cfg)
    steps = tmp_path / "steps"
    steps.mkdir()
    res = run_action(
        REPO,
        with_={
            "install": "false",
            "python-version": "",
            "config": "compress.yaml",
            "comment-on-pr": "false",
            "mlflow-tracking-uri": mlflow_server.uri,
        },
        env=_pull_request_env(tmp_path),
        workspace=workdir,
        tmp=steps,
        token="t",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    (version,) = client.search_model_versions(f"name='{name}'")
    assert version.version is not None
    # a pull request registers a candidate and never promotes it
    assert version.tags["ci_compress.promotion"] == "pull-request"
    assert res.outputs["model-version"] == str(version.version)
    report = json.loads((workdir / "ci-compress-report" / "report.json").read_text())
    assert report["registry"]["version"] == str(version.version)
    assert res.outputs["mlflow-run-id"] == report["mlflow"]["run_id"] == version.run_id


def test_without_mlflow_there_is_no_run_id_anywhere(workdir: Path, tmp_path: Path) -> None:
    """--fast records nothing: no 'mlflow run:' line, no run id in report.json, junit.xml
    or the report github outputs (an empty mlflow-run-id, as the README says)."""
    path = write_config(workdir, base_config(mlflow={"enabled": True, "registered_model": "m"}))
    proc = run_cli("run", "--config", str(path), "--fast", "--report-dir", "out", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "mlflow run:" not in proc.stdout
    report = json.loads((workdir / "out" / "report.json").read_text())
    assert report["mlflow"]["run_id"] is None
    assert "mlflow.run_id" not in (workdir / "out" / "junit.xml").read_text()
    assert "MLflow run:" not in (workdir / "out" / "report.md").read_text()
    outputs = tmp_path / "outputs"
    outputs.write_text("")
    rendered = run_cli(
        "report",
        "github",
        "--report",
        str(workdir / "out" / "report.json"),
        "--no-comment",
        cwd=workdir,
        env={"GITHUB_OUTPUT": str(outputs)},
    )
    assert rendered.returncode == 0, rendered.stderr
    written = parse_output_file(outputs.read_text())
    assert written["mlflow-run-id"] == "" and written["model-version"] == ""
    assert written["verdict"] == "pass"
