"""The confident decision rule through the whole gate: the README's worked example
(prune 80%, limit 1.5 points) is inconclusive, exit 5, and the interval is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.servers import MlflowServer


@pytest.mark.slow
def test_inconclusive_gate_exits_5_and_logs_the_interval(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    """The README's worked example, for real: prune 80%, limit 1.5 points."""
    from mlflow import MlflowClient

    passes = [{"type": "prune", "amount": 0.8}, {"type": "quantize"}]
    mlflow = {"enabled": True, "tracking_uri": mlflow_server.uri, "experiment": "confident"}
    cfg = write_config(
        workdir,
        base_config(
            passes=passes,
            mlflow=mlflow,
            thresholds={"max_accuracy_drop": 1.5, "decision": "confident"},
        ),
    )
    proc = run_cli("run", "--config", str(cfg), "--quiet", cwd=workdir)
    assert proc.returncode == 5, proc.stderr
    assert "gate INCONCLUSIVE" in proc.stdout and "95% CI" in proc.stdout
    assert "too small to decide" in proc.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["verdict"] == "inconclusive" and report["gate"]["decision"] == "confident"
    lo, hi = (
        report["deltas"]["delta.accuracy_drop_ci_low"],
        report["deltas"]["delta.accuracy_drop_ci_high"],
    )
    assert lo < 1.5 < hi
    assert report["statistics"]["teacher_only"] > report["statistics"]["student_only"]
    md = (workdir / "report" / "report.md").read_text()
    assert f"[{lo:.4g}, {hi:.4g}]" in md and "INCONCLUSIVE" in md
    run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(report["mlflow"]["run_id"])
    assert run.data.metrics["delta.accuracy_drop_ci_low"] == pytest.approx(lo)
    assert run.data.metrics["delta.accuracy_drop_ci_high"] == pytest.approx(hi)
    assert run.data.tags["ci_compress.verdict"] == "inconclusive"

    warn = write_config(
        workdir,
        base_config(
            passes=passes,
            thresholds={"max_accuracy_drop": 1.5, "decision": "confident", "inconclusive": "warn"},
        ),
        name="warn.yaml",
    )
    proc = run_cli("run", "--config", str(warn), "--quiet", cwd=workdir)
    assert proc.returncode == 0 and "warning: the holdout is too small" in proc.stdout
    point = write_config(
        workdir, base_config(passes=passes, thresholds={"max_accuracy_drop": 1.5}), name="p.yaml"
    )
    assert run_cli("run", "--config", str(point), "--quiet", cwd=workdir).returncode == 1
