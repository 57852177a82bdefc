"""The whole gate against a real MLflow server started by the test suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from ci_compress.packing.file import load_packed
from tests.helpers.cli import run_cli, run_console
from tests.helpers.configs import base_config, write_config
from tests.helpers.servers import MlflowServer, free_port

pytestmark = pytest.mark.slow


def _mlflow(uri: str, experiment: str) -> dict:
    return {"enabled": True, "tracking_uri": uri, "experiment": experiment}


def test_run_is_recorded_with_metrics_equal_to_report_json(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    cfg = write_config(
        workdir,
        base_config(
            mlflow=_mlflow(mlflow_server.uri, "e2e-record"),
            thresholds={"max_accuracy_drop": 5.0, "min_compression_ratio": 3.0},
        ),
    )
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(report["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    gate_metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("pass.")}
    assert gate_metrics == pytest.approx(report["metrics"])
    assert run.data.metrics["gate.passed"] == 1.0
    assert (
        run.data.params["passes.0.type"] == "prune" and run.data.params["passes.0.amount"] == "0.5"
    )
    assert run.data.tags["ci_compress.verdict"] == "pass"
    assert "mlflow.source.git.commit" not in run.data.tags  # not a git checkout
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.md", "student", "config"} <= names
    assert [f.path for f in client.list_artifacts(run.info.run_id, "student")] == [
        "student/student.ccz"
    ]


def test_quantized_student_ships_at_least_3x_smaller(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    cfg = write_config(
        workdir,
        base_config(passes=[{"type": "quantize"}], mlflow=_mlflow(mlflow_server.uri, "e2e-quant")),
    )
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    teacher = (workdir / "digits_mlp.safetensors").stat().st_size
    student = (workdir / "report" / "student.ccz").stat().st_size
    assert teacher / student >= 3.0
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["student"]["file_bytes"] == student and report["teacher"]["file_bytes"] == teacher


def test_pruned_students_shipped_sparsity_equals_the_amount(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    cfg = write_config(
        workdir,
        base_config(
            passes=[{"type": "prune", "amount": 0.7}],
            mlflow=_mlflow(mlflow_server.uri, "e2e-prune"),
        ),
    )
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    shipped, manifest = load_packed(workdir / "report" / "student.ccz")
    weights = [m.weight for m in shipped.modules() if isinstance(m, torch.nn.Linear)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.7 * total)
    assert manifest["passes"][0]["details"]["sparsity"] == pytest.approx(zeros / total)


def test_tight_threshold_fails_and_is_recorded_as_failed_gate(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    cfg = write_config(
        workdir,
        base_config(
            mlflow=_mlflow(mlflow_server.uri, "e2e-fail"),
            thresholds={"min_compression_ratio": 1000.0},
        ),
    )
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(report["mlflow"]["run_id"])
    assert run.data.metrics["gate.passed"] == 0.0 and run.data.tags["ci_compress.verdict"] == "fail"


def test_unreachable_server_gives_infra_exit_code(workdir: Path) -> None:
    uri = f"http://user:s3cr3t-pass@127.0.0.1:{free_port()}"
    cfg = write_config(workdir, base_config(mlflow=_mlflow(uri, "nowhere")))
    proc = run_cli(
        "run",
        "--config",
        str(cfg),
        "--quiet",
        cwd=workdir,
        env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "s3cr3t-pass" not in proc.stderr + proc.stdout
    assert "MLflow at http://***@127.0.0.1" in proc.stderr


def test_not_required_server_down_still_gates(workdir: Path) -> None:
    cfg = write_config(
        workdir,
        base_config(mlflow={**_mlflow(f"http://127.0.0.1:{free_port()}", "x"), "required": False}),
    )
    proc = run_cli(
        "run",
        "--config",
        str(cfg),
        "--quiet",
        cwd=workdir,
        env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "continuing without MLflow" in proc.stderr


def test_default_store_is_a_sqlite_file_beside_the_config_created_quietly(workdir: Path) -> None:
    """No tracking_uri and no MLFLOW_TRACKING_URI: the run lands in ./mlflow.db, and
    creating that new store prints nothing (MLflow logs its table creation at INFO)."""
    cfg = write_config(workdir, base_config(mlflow={"enabled": True, "experiment": "local"}))
    # A process of its own: MLflow's loggers are set up at import, once per process.
    proc = run_console("run", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "Creating initial MLflow database tables" not in proc.stdout + proc.stderr
    assert " INFO mlflow" not in proc.stderr and " INFO alembic" not in proc.stderr, proc.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    assert MlflowClient(tracking_uri=store).get_run(report["mlflow"]["run_id"]).info.status == (
        "FINISHED"
    )
