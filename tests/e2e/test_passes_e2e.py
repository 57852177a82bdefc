"""New passes through the whole gate: real CLI, real MLflow server, shipped .ccz."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.servers import MlflowServer

pytestmark = pytest.mark.slow


def test_pipeline_with_new_passes_logs_per_pass_step_metrics(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    passes = [
        {"type": "distill", "width": 0.5, "epochs": 10},
        {"type": "prune", "amount": 0.5, "structured": True, "fine_tune_epochs": 5},
        {"type": "cluster", "bits": 5},
    ]
    cfg = write_config(
        workdir,
        base_config(
            passes=passes,
            data={
                "holdout": {"builtin": "digits", "split": "test"},
                "train": {"builtin": "digits", "split": "train"},
            },
            mlflow={"enabled": True, "tracking_uri": mlflow_server.uri, "experiment": "e2e-passes"},
            thresholds={"max_accuracy_drop": 15.0},
        ),
    )
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    recs = report["passes"]
    assert [r["name"] for r in recs] == ["distill", "prune", "cluster"]
    # the distilled student replaced the teacher: 50826 -> 64*128+128 + 128*64+64 + 64*10+10
    assert recs[0]["params_before"] == 50826 and recs[0]["params_after"] == 17226
    assert recs[1]["params_before"] == 17226 and recs[1]["params_after"] < 17226
    assert report["student"]["metrics"]["parameters"] == recs[2]["params_after"]
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    history = client.get_metric_history(report["mlflow"]["run_id"], "pass.params_after")
    assert sorted((m.step, m.value) for m in history) == [
        (i, float(r["params_after"])) for i, r in enumerate(recs)
    ]


def test_pass_needing_missing_data_is_a_config_error_from_the_cli(workdir: Path) -> None:
    cfg = write_config(workdir, base_config(passes=[{"type": "distill", "width": 0.5}]))
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 2, proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first == (
        "Error: data.train: passes[0] distills a student, but the config has no data.train"
    )
    assert "Traceback" not in proc.stderr
