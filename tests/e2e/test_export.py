"""Deployable exports and the size breakdown, through the real pipeline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.configs import base_config, write_config
from tests.helpers.servers import MlflowServer


def test_a_pt2_export_matches_and_is_a_model_source(workdir: Path) -> None:
    cfg = base_config(passes=[{"type": "prune", "amount": 0.6}], ship={"export": ["pt2"]})
    write_config(workdir, cfg)
    r = run_cli("run", "--config", "compress.yaml", "-q", cwd=workdir)
    assert r.returncode == 0, r.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    ex = report["exports"]["pt2"]
    assert ex["status"] == "ok", ex
    pt2 = Path(ex["file"])
    assert pt2 == workdir / "report" / "student.pt2" and pt2.stat().st_size == ex["file_bytes"]
    assert ex["agreement"] == 1.0 and ex["max_abs_diff"] < 1e-4
    assert report["metrics"]["student.pt2_agreement"] == 1.0
    assert "torch.export (.pt2) agreement" in r.stdout
    # what was exported is a model source as it is: gated against the teacher, unchanged
    again = base_config(model={"path": str(pt2)}, passes=[], report={"dir": "report-pt2"})
    write_config(workdir, again, name="pt2.yaml")
    r2 = run_cli("run", "--config", "pt2.yaml", "-q", cwd=workdir)
    assert r2.returncode == 0, r2.stderr
    student = json.loads((workdir / "report-pt2" / "report.json").read_text())["teacher"]
    assert student["metrics"]["accuracy"] == report["student"]["metrics"]["accuracy"]


@pytest.mark.slow
def test_fp32_pruned_student_exports_and_matches(workdir: Path) -> None:
    cfg = base_config(
        passes=[{"type": "prune", "amount": 0.6}],
        ship={"export": ["torchscript", "onnx"]},
    )
    write_config(workdir, cfg)
    r = run_cli("run", "--config", "compress.yaml", "-q", cwd=workdir)
    assert r.returncode == 0, r.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    ex = report["exports"]
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts.pt")):
        assert ex[fmt]["status"] == "ok"
        assert Path(ex[fmt]["file"]) == workdir / "report" / f"student{suffix}"
        assert Path(ex[fmt]["file"]).stat().st_size == ex[fmt]["file_bytes"]
        assert ex[fmt]["samples"] == report["holdout"]["samples"]
        assert ex[fmt]["agreement"] == 1.0 and ex[fmt]["max_abs_diff"] < 1e-4
    assert report["metrics"]["student.onnx_agreement"] == 1.0
    assert "ONNX export agreement" in r.stdout and "bits per weight" in r.stdout
    # size figures: bits per weight from the real file, one row per layer
    m = report["metrics"]
    assert m["student.bits_per_weight"] == pytest.approx(
        8 * m["student.file_bytes"] / m["student.parameters"]
    )
    size = report["size"]
    assert size["file_bytes"] == (workdir / "report" / "student.ccz").stat().st_size
    assert size["teacher_file_bytes"] == report["teacher"]["file_bytes"]
    assert [row["module"] for row in size["layers"]] == ["0", "2", "4"]
    assert sum(row["parameters"] for row in size["layers"]) == m["student.parameters"]
    assert sum(row["nonzero"] for row in size["layers"]) == m["student.nonzero_parameters"]
    assert all(row["compressed_bytes"] > 0 for row in size["layers"])
    assert any("sparse(" in e for row in size["layers"] for e in row["encodings"].values())


@pytest.mark.slow
def test_quantized_student_skips_onnx_with_a_reason(workdir: Path) -> None:
    cfg = base_config(ship={"export": ["onnx", "torchscript"]})  # prune + quantize
    write_config(workdir, cfg)
    r = run_cli("run", "--config", "compress.yaml", "--json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # stdout stays pure JSON: exporter noise is silenced
    assert report["exports"]["onnx"]["status"] == "skipped"
    assert "no ONNX operator" in report["exports"]["onnx"]["reason"]
    assert report["exports"]["torchscript"]["agreement"] == 1.0
    assert "student.onnx_agreement" not in report["metrics"]
    assert any("onnx export skipped" in w for w in report["warnings"])


def test_onnx_export_without_the_extra_is_a_config_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = base_config(ship={"export": ["onnx"]})
    write_config(workdir, cfg)
    # hide the extra from this CLI call only, as if it were not installed
    for name in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    r = run_cli("run", "--config", "compress.yaml", cwd=workdir)
    assert r.returncode == 2, r.stderr
    assert "ship.export" in r.stderr and "ci-compress[export]" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_onnx_agreement_and_exports_are_recorded_in_mlflow(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    from mlflow.tracking import MlflowClient

    cfg = base_config(
        passes=[{"type": "prune", "amount": 0.5}],
        ship={"export": ["onnx"]},
        mlflow={"enabled": True, "tracking_uri": mlflow_server.uri, "experiment": "e2e-export"},
    )
    write_config(workdir, cfg)
    r = run_cli("run", "--config", "compress.yaml", "-q", cwd=workdir)
    assert r.returncode == 0, r.stderr
    report = json.loads((workdir / "report" / "report.json").read_text())
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(report["mlflow"]["run_id"])
    assert run.data.metrics["student.onnx_agreement"] == 1.0
    assert run.data.metrics["student.bits_per_weight"] == pytest.approx(
        report["metrics"]["student.bits_per_weight"]
    )
    assert run.data.metrics["student.bits_per_weight"] < 20  # 50% sparse fp32: well under 32
    paths = {f.path for f in client.list_artifacts(run.info.run_id, "student")}
    assert paths == {"student/student.ccz", "student/student.onnx"}
